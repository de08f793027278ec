"""ModelInspector over the Rust GGUF header scanner: one scan per model."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from llamagate.adapters.model_files import locate
from llamagate.domain.errors import InvalidModel, ModelNotFound
from llamagate.domain.hyperparameters import Hyperparameters
from llamagate.domain.model_facts import ModelFacts, MoreBytes
from llamagate.domain.model_roots import FileKind, ModelRoots, check_kind
from llamagate.domain.shards import shard_names
from llamagate.rust_ext import GGUFError, scan_bytes, scan_file


class GgufInspector:
    """Reads model headers, opening only files under ``roots``: every other
    path is refused before it is opened (adapters/model_files, domain/model_roots).
    ``roots`` None: any file this process can read, for local tools; the
    service always passes its roots (server/app.build_registry)."""

    def __init__(self, roots: ModelRoots | None = None) -> None:
        self._roots = roots

    def inspect(self, path: str) -> ModelFacts:
        resolved, size = self._admit_shards(path)  # every shard admitted before any byte is read
        try:
            header = scan_file(resolved)
        except GGUFError as error:
            raise InvalidModel(f"{path} is not a valid GGUF model: {error}") from error
        except OSError as error:  # strerror only: the error's filename is the resolved target
            raise InvalidModel(f"cannot read {path}: {error.strerror or 'read failed'}") from error
        return _facts(header, resolved, size)

    def _admit_shards(self, first: str) -> tuple[str, int]:
        """The real path of ``first`` and the bytes of all its shards, each
        admitted by the rule (stat only); every sibling must be present (SPEC
        §2). Siblings are named beside the path given (a Hub snapshot's
        symlinks), not beside its target (a blob named by its hash)."""
        given = Path(first)
        resolved = self._admit(first, *locate(first))
        total = os.stat(resolved).st_size
        for name in shard_names(given.name):
            if name == given.name:
                continue
            shard = str(given.with_name(name))
            place, kind = locate(shard)
            if kind is FileKind.MISSING and (self._roots is None or self._roots.contains(place)):
                raise ModelNotFound(f"shard {shard} of split model {given.name} is missing")
            total += os.stat(self._admit(shard, place, kind)).st_size
        return resolved, total

    def _admit(self, path: str, resolved: str, kind: FileKind) -> str:
        if self._roots is None:
            check_kind(path, kind)
        else:
            self._roots.admit(path, resolved, kind)
        return resolved

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
