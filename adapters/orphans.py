"""Cleaning up llama-server children a crashed llamagate left behind (SPEC §11)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def is_ours(exe: str, install_dirs: Iterable[Path], binaries: Iterable[Path]) -> bool:
    """Under one of our install dirs, or exactly a configured binary."""
    path = Path(exe)
    return any(path == b for b in binaries) or any(path.is_relative_to(d) for d in install_dirs)


def kill_orphans(install_dirs: Iterable[Path], binaries: Iterable[Path] = ()) -> list[int]:
    """SIGKILL our llama-servers whose parent is gone (re-parented to init).

    A child whose parent is alive belongs to another running llamagate and is
    left alone, as is every llama-server that is not ours.
    """
    dirs = [Path(d).resolve() for d in install_dirs]
    bins = [Path(b).resolve() for b in binaries]
    killed = []
    for proc in psutil.process_iter(["pid", "ppid", "exe", "name"]):
        info = proc.info
        if info["name"] != "llama-server" or not info["exe"] or info["pid"] == os.getpid():
            continue
        if info["ppid"] in (0, 1) and is_ours(info["exe"], dirs, bins):
            try:
                proc.kill()
                killed.append(info["pid"])
                log.warning("killed orphaned llama-server %d (%s)", info["pid"], info["exe"])
            except psutil.Error:
                pass
    return killed
