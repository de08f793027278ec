"""Each conversation's scratch directory and, when the service runs as root,
its own unprivileged uid.

A uid per conversation, not one shared ``nobody``: RLIMIT_NPROC counts per
uid, so a fork bomb in one conversation cannot starve another's sandbox; one
conversation cannot read another's scratch files (0700, its own); and
everything left running under that uid can be killed without touching
anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import psutil

from llamagate.adapters.tools.process_cleanup import kill_uid

log = logging.getLogger(__name__)

# Debian leaves 65000-65533 unallocated (policy 9.2.2); systemd's DynamicUser
# range (61184-65519) overlaps, so a uid some process already runs as is skipped.
DEFAULT_UIDS = range(65000, 65534)
_PREFIX = "conv-"
_STALE = re.compile(rf"{_PREFIX}(\d+)-")


class SandboxBusy(Exception):
    """Every sandbox uid is taken by a running conversation."""


class UidPool:
    def __init__(self, uids: range) -> None:
        if not uids or uids.start < 1 or uids.stop > 2**32 - 1:
            raise ValueError(f"sandbox uids must be a non-empty range of unprivileged uids, not {uids}")
        self._free = list(uids)
        self._taken: set[int] = set()

    def acquire(self) -> int:
        in_use = _uids_running()
        for uid in self._free:
            if uid not in self._taken and uid not in in_use:
                self._taken.add(uid)
                return uid
        raise SandboxBusy(f"all {len(self._free)} sandbox uids are in use")

    def release(self, uid: int) -> None:
        self._taken.discard(uid)


class Workspace:
    """One conversation's scratch directory, made on first use, removed by ``close()``."""

    def __init__(self, root: Path, pool: UidPool | None) -> None:
        self._root = root
        self._pool = pool
        self._path: Path | None = None
        self._uid: int | None = None
        self.turn = asyncio.Lock()  # one run at a time (see Sandbox.run)

    @property
    def uid(self) -> int | None:
        return self._uid

    def ensure(self) -> Path:
        """The directory (and uid), made now if this is the first use. Raises SandboxBusy or OSError."""
        if self._path is None:
            path = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=self._root))  # 0700
            if self._pool is not None:
                try:
                    self._uid = self._pool.acquire()
                except SandboxBusy:
                    remove_tree(path)
                    raise
                os.chown(path, self._uid, self._uid)
            self._path = path
        return self._path

    def sweep(self) -> None:
        """Kill whatever still runs as this conversation's uid (nothing to do without one)."""
        if self._uid is not None:
            kill_uid(self._uid)

    def close(self) -> None:
        """Kill what is left, remove the directory, give the uid back. Idempotent."""
        self.sweep()
        if self._path is not None:
            remove_tree(self._path)
            self._path = None
        if self._uid is not None and self._pool is not None:
            self._pool.release(self._uid)
            self._uid = None


def prepare_root(root: Path) -> None:
    """Make the scratch root (others may pass through, not list it) and remove
    what crashed services left there. Raises OSError saying which directory."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        if root.stat().st_uid == os.geteuid():
            root.chmod(0o711)
        entries = list(root.iterdir())
        if not os.access(root, os.W_OK):
            raise PermissionError(f"{root} is not writable")
    except OSError as e:
        raise OSError(f"the sandbox's scratch root {root} cannot be used: {e}") from e
    for entry in entries:
        owner = _STALE.match(entry.name)
        if owner and not psutil.pid_exists(int(owner.group(1))):
            log.info("removing %s, left by a llamagate that has ended", entry)
            remove_tree(entry)


def remove_tree(path: Path) -> None:
    """Remove ``path``, also where the program took away its own permissions."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError:
        _open_up(str(path))
        shutil.rmtree(path)


def _open_up(directory: str) -> None:
    """Make ``directory`` and the directories below it ours to empty (symlinks are never followed)."""
    with contextlib.suppress(OSError):
        os.chmod(directory, stat.S_IRWXU)
        with os.scandir(directory) as entries:
            subdirectories = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        for subdirectory in subdirectories:
            _open_up(subdirectory)


def _uids_running() -> set[int]:
    uids = set()
    for process in psutil.process_iter(["uids"]):
        if (ids := process.info.get("uids")) is not None:
            uids.add(ids.real)
    return uids
