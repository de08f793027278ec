"""What the sandbox needs to know of the host: its system directories, the
/etc entries programs read, where the service's Python lives, what this
bwrap can do. Read once, at start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from llamagate.adapters.tools.sandbox_argv import HostLayout

_HELP_TIMEOUT_S = 20.0
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf", "passwd",
        "group", "ssl", "ca-certificates", "mime.types", "bash.bashrc", "profile", "inputrc", "terminfo")


def bwrap_options(bwrap: str) -> str:
    """bwrap's help text, to tell which options this version has."""
    try:
        done = subprocess.run([bwrap, "--help"], check=False, capture_output=True, timeout=_HELP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).decode("utf-8", "replace")


def host_layout() -> HostLayout:
    """The system directories (bound read-only) and links (/bin -> usr/bin) as they are here."""
    links, dirs = [], []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            dirs.append(path)
    etc = tuple(f"/etc/{name}" for name in _ETC if os.path.exists(f"/etc/{name}"))
    return HostLayout(tuple(links), tuple(dirs), etc, _python_paths(dirs))


def _python_paths(system_dirs: Sequence[str]) -> tuple[str, ...]:
    """The service's Python installation and venv, where the system directories do not hold them."""
    paths: list[str] = []
    for prefix in sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}):
        inside = [d for d in (*system_dirs, *paths) if prefix == d or prefix.startswith(d.rstrip("/") + "/")]
        if not inside and prefix != "/":
            paths.append(prefix)
    return tuple(paths)


def reachable_by_others(path: Path) -> bool:
    """Whether a uid that is neither owner nor group member may pass through to ``path``."""
    resolved = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in (resolved, *resolved.parents))


def scratch_root_default() -> Path:
    return Path(tempfile.gettempdir()) / f"llamagate-scratch-{os.getuid()}"  # per user: 0711, its owner's
