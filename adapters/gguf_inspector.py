"""ModelInspector over the Rust GGUF header scanner: one scan per model."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from llamagate.domain.errors import InvalidModel, ModelNotFound
from llamagate.domain.hyperparameters import Hyperparameters
from llamagate.domain.model_facts import ModelFacts, MoreBytes
from llamagate.domain.shards import shard_names
from llamagate.rust_ext import GGUFError, scan_bytes, scan_file


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
        return _facts(header, str(file.resolve()), _total_size(file))

    def inspect_prefix(self, prefix: bytes, path: str, size_bytes: int) -> ModelFacts | MoreBytes:
        try:
            header = scan_bytes(prefix)
        except GGUFError as error:
            raise InvalidModel(f"{path} is not a valid GGUF model: {error}") from error
        if not header["complete"]:
            if len(prefix) >= size_bytes:  # the whole file, and still no end of header
                raise InvalidModel(f"{path} is not a valid GGUF model: its header runs past its end")
            return MoreBytes(header["bytes_needed"])
        return _facts(header, path, size_bytes)


def _facts(header: dict[str, Any], path: str, size_bytes: int) -> ModelFacts:
    architecture = header["architecture"]
    if not architecture:
        raise InvalidModel(f"{path} has no general.architecture key; is it a GGUF model?")
    return ModelFacts(
        path=path,
        architecture=architecture,
        native_context_length=header["model"]["context_length"] or 0,
        chat_template=header["chat_template"],
        size_bytes=size_bytes,
        hyperparameters=hyperparameters(header["model"]),
    )


def hyperparameters(model: dict[str, Any]) -> Hyperparameters:
    """The scanner's "model" dict as ``Hyperparameters`` (per-layer lists become
    tuples). The scanner has already read every per-layer array: no second scan."""
    return Hyperparameters(**{f.name: _frozen(model.get(f.name)) for f in fields(Hyperparameters)})


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _total_size(first: Path) -> int:
    """Bytes of all shards; every sibling must be present (SPEC §2)."""
    total = 0
    for name in shard_names(first.name):
        shard = first.with_name(name)
        if not shard.is_file():
            raise ModelNotFound(f"shard {shard} of split model {first.name} is missing")
        total += shard.stat().st_size
    return total
