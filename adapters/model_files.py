"""The model roots on this machine, and the stat-only look at a requested model file.

Which directories: ``LLAMAGATE_MODEL_ROOTS`` (os.pathsep-separated) when
set, exactly those; otherwise the directories of the files the operator named
(``serve --model FILE``, the model and projector paths of ``--config``,
``plan``'s file). Either way the two caches are roots too, so the default
model and Hub downloads keep loading: llamagate's own model cache and
huggingface_hub's (HF_HUB_CACHE, not HF_HOME: the Hub token lives there).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from llamagate.adapters import paths
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.model_roots import FileKind, ModelRoots

ROOTS_VARIABLE = "LLAMAGATE_MODEL_ROOTS"


@dataclass(frozen=True)
class ModelRootSettings:
    configured: tuple[str, ...] = ()  # LLAMAGATE_MODEL_ROOTS, absolute; () = the default list
    # The files the operator named (serve --model, --config's paths): when nothing
    # is configured, their directories are roots; when something is, they must lie under it.
    operator_files: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ModelRootSettings:
        """Raises ValueError naming the variable when one is malformed."""
        raw = env.get(ROOTS_VARIABLE, "")
        roots = tuple(os.path.expanduser(part.strip()) for part in raw.split(os.pathsep) if part.strip())
        relative = [root for root in roots if not os.path.isabs(root)]
        if relative:
            raise ValueError(f"{ROOTS_VARIABLE} must list absolute directories (separated by {os.pathsep!r}),"
                             f" got {', '.join(map(repr, relative))}")
        return cls(configured=roots)

    def with_operator_files(self, files: Iterable[str]) -> ModelRootSettings:
        """These settings with ``files`` named by the operator."""
        return replace(self, operator_files=self.operator_files + tuple(files))


def model_roots(settings: ModelRootSettings, cache_dir: Path) -> ModelRoots:
    """The roots as real paths (blocking: follows symlinks), caches included."""
    from huggingface_hub import constants as hf_constants  # here: settings import this module, clients too
    if settings.configured:
        chosen: list[str] = list(settings.configured)
        setting = f"{ROOTS_VARIABLE} and the model caches"
    else:
        # A named file may be a symlink into a blob store: both its directory and its target's.
        chosen = [os.path.dirname(os.path.abspath(f)) for f in settings.operator_files]
        chosen += [os.path.dirname(os.path.realpath(f)) for f in settings.operator_files]
        setting = f"the model caches and the directories of the files serve was started with; {ROOTS_VARIABLE} sets them"
    chosen += [str(paths.models_dir(cache_dir)), str(hf_constants.HF_HUB_CACHE)]
    real = dict.fromkeys(os.path.realpath(os.path.expanduser(root)) for root in chosen)  # ordered, no repeats
    return ModelRoots(tuple(real), setting)


def locate(path: str) -> tuple[str, FileKind]:
    """The real path ``path`` resolves to and what is there, from lstat/stat
    alone: nothing is opened (a FIFO would block, a device never end)."""
    if "\0" in path:
        raise InvalidArgument(f"a model path must not contain NUL characters: {path!r}")
    resolved = os.path.realpath(path)  # not strict: a missing file still has a place, inside a root or not
    try:
        mode = os.stat(resolved).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return resolved, FileKind.MISSING
    except OSError:  # permissions, a symlink loop
        return resolved, FileKind.UNREADABLE
    return resolved, _kind(mode)


def _kind(mode: int) -> FileKind:
    for test, kind in ((stat.S_ISREG, FileKind.REGULAR), (stat.S_ISDIR, FileKind.DIRECTORY),
                       (stat.S_ISCHR, FileKind.CHARACTER_DEVICE), (stat.S_ISBLK, FileKind.BLOCK_DEVICE),
                       (stat.S_ISFIFO, FileKind.FIFO), (stat.S_ISSOCK, FileKind.SOCKET)):
        if test(mode):
            return kind
    return FileKind.OTHER
