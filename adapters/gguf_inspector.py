"""ModelInspector over the Rust GGUF header scanner."""

from __future__ import annotations

from pathlib import Path

from llamagate.domain.errors import InvalidModel, ModelNotFound
from llamagate.domain.model import ModelFacts
from llamagate.domain.model_shape import ModelShape, shape_array_keys, shape_from_header
from llamagate.domain.shards import shard_names
from llamagate.rust_ext import GGUFError, scan_file


class GgufInspector:
    def inspect(self, path: str) -> ModelFacts:
        file = Path(path)
        if not file.is_file():
            raise ModelNotFound(f"model file not found: {path}")
        try:
            header = scan_file(file)
        except GGUFError as error:
            raise InvalidModel(f"{path} is not a valid GGUF model: {error}") from error
        except OSError as error:
            raise InvalidModel(f"cannot read {path}: {error}") from error
        architecture = header["architecture"]
        if not architecture:
            raise InvalidModel(f"{path} has no general.architecture key; is it a GGUF model?")
        shape, shape_error = _shape(file, header)
        return ModelFacts(
            path=str(file.resolve()),
            architecture=architecture,
            native_context_length=header["model"]["context_length"] or 0,
            chat_template=header["chat_template"],
            size_bytes=_total_size(file),
            shape=shape,
            shape_error=shape_error,
        )


def _shape(file: Path, header: dict) -> tuple[ModelShape | None, str]:
    """The KV-relevant shape; a few per-layer arrays need a second (cheap) scan."""
    keys = [k for k in shape_array_keys(header["architecture"]) if k in header["arrays"]]
    if keys:
        header = scan_file(file, array_values=keys)
    try:
        return shape_from_header(header), ""
    except (ValueError, KeyError, TypeError) as error:
        return None, str(error)


def _total_size(first: Path) -> int:
    """Bytes of all shards; every sibling must be present (SPEC §2)."""
    total = 0
    for name in shard_names(first.name):
        shard = first.with_name(name)
        if not shard.is_file():
            raise ModelNotFound(f"shard {shard} of split model {first.name} is missing")
        total += shard.stat().st_size
    return total
