"""Which files may be opened as models: only those under the model roots.

A caller names a path; the service must not become a way to probe or read
the rest of its machine. The rule is decided on the path's resolved real
path (every symlink and ``..`` followed, by the adapter) and the file's kind
from its metadata alone, before anything is opened: a FIFO would block an
open, a device would stream forever, and no error may carry a file's bytes.

Pure: the adapter (adapters/model_files.py) does the realpath and the stat.
"""

from __future__ import annotations

import enum
import posixpath  # pure string rules (domain/ imports no os); the service runs on POSIX
from dataclasses import dataclass

from llamagate.domain.errors import InvalidModel, ModelNotFound, PermissionDenied


class FileKind(enum.Enum):
    """What a path is, from its metadata (stat) alone."""

    REGULAR = "a regular file"
    DIRECTORY = "a directory"
    CHARACTER_DEVICE = "a character device"
    BLOCK_DEVICE = "a block device"
    FIFO = "a FIFO"
    SOCKET = "a socket"
    OTHER = "not a regular file"
    MISSING = "missing"
    UNREADABLE = "unreadable"  # its metadata cannot be read (permissions, a symlink loop)


@dataclass(frozen=True)
class ModelRoots:
    """The directories models may be loaded from, as absolute real paths.

    ``setting`` says where they come from, for the refusal's message (the
    variable to set, never the directories themselves: a caller learns
    nothing about the machine's layout from a refusal).
    """

    roots: tuple[str, ...]
    setting: str = "LLAMAGATE_MODEL_ROOTS"

    def __post_init__(self) -> None:
        relative = [root for root in self.roots if not posixpath.isabs(root)]
        if relative:
            raise ValueError(f"model roots must be absolute paths, got {relative}")

    def contains(self, resolved: str) -> bool:
        """Whether the real path ``resolved`` is a root or lies below one.
        A relative path is never inside: the adapter always resolves."""
        if not posixpath.isabs(resolved):
            return False
        path = posixpath.normpath(resolved)
        return any(_within(path, posixpath.normpath(root)) for root in self.roots)

    def admit(self, requested: str, resolved: str, kind: FileKind) -> None:
        """Raise unless ``requested`` (resolved to ``resolved``, of ``kind``)
        may be opened as a model file.

        Outside every root: PermissionDenied, whatever is there (missing
        included), so a refusal says nothing of what exists elsewhere.
        Inside: ModelNotFound when missing, InvalidModel when not a regular
        file. Every message names the path as given, never its target."""
        if not self.contains(resolved):
            raise PermissionDenied(f"{requested} is outside the directories models may be loaded from"
                                   f" ({self.setting})")
        check_kind(requested, kind)


def check_kind(requested: str, kind: FileKind) -> None:
    """Raise unless ``kind`` is a file a model can be read from."""
    if kind is FileKind.REGULAR:
        return
    if kind is FileKind.MISSING:
        raise ModelNotFound(f"model file not found: {requested}")
    if kind is FileKind.UNREADABLE:
        raise InvalidModel(f"cannot read {requested}: the service may not look at it")
    raise InvalidModel(f"{requested} is {kind.value}, not a model file")


def _within(path: str, root: str) -> bool:
    if path == root:
        return True
    return path.startswith(root if root.endswith("/") else root + "/")
