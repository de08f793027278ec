"""Finding llama-server (SPEC §1) and the environment it runs in."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from llamagate.adapters import paths
from llamagate.domain.errors import EngineNotFound

BINARY = "llama-server"
# The RPC worker, built beside llama-server from the same tree: the same ggml,
# so the same RPC protocol version (llama-server refuses a worker of another).
RPC_SERVER = "ggml-rpc-server"
INSTALL_HINT = "run `llamagate engine install` (it builds llama-server from source, once)"


def candidates(env: Mapping[str, str], cache: Path, llama_cpp_dir: str | None = None) -> list[Path]:
    """Every place we look, in order: $LLAMA_SERVER_PATH, a chosen llama.cpp
    dir, our own cache (CUDA build before CPU), then $PATH."""
    found: list[Path] = []
    if env.get("LLAMA_SERVER_PATH"):
        found.append(Path(env["LLAMA_SERVER_PATH"]).expanduser())
    chosen = llama_cpp_dir or env.get("LLAMA_CPP_DIR")
    dirs = [Path(chosen).expanduser()] if chosen else []
    dirs += [paths.engine_build_dir(cache, backend) for backend in ("cuda", "cpu")]
    for directory in dirs:
        found += [directory / BINARY, directory / "bin" / BINARY, directory / "build" / "bin" / BINARY]
    on_path = shutil.which(BINARY, path=env.get("PATH"))
    if on_path:
        found.append(Path(on_path))
    return found


def find_llama_server(env: Mapping[str, str], cache: Path, llama_cpp_dir: str | None = None) -> Path:
    """The first executable candidate (blocking: it stats files and searches PATH)."""
    looked = candidates(env, cache, llama_cpp_dir)
    for candidate in looked:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    places = "\n  ".join([*map(str, looked), f"{BINARY} on PATH ({'not found' if env.get('PATH') else 'PATH unset'})"])
    raise EngineNotFound(f"no {BINARY} found; looked in:\n  {places}\nTo fix: {INSTALL_HINT}")


def find_rpc_server(env: Mapping[str, str], cache: Path, llama_cpp_dir: str | None = None) -> Path:
    """ggml-rpc-server beside a llama-server candidate (in their order), else on $PATH."""
    looked = list(dict.fromkeys(c.parent / RPC_SERVER for c in candidates(env, cache, llama_cpp_dir)))
    on_path = shutil.which(RPC_SERVER, path=env.get("PATH"))
    for candidate in [*looked, *([Path(on_path)] if on_path else [])]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    places = "\n  ".join(map(str, looked))
    raise EngineNotFound(f"no {RPC_SERVER} found; looked in:\n  {places}\nand on PATH. To fix: {INSTALL_HINT}")


def child_environment(binary: Path, base: Mapping[str, str]) -> dict[str, str]:
    """The child's env: the service's (``base``), with shared libraries beside the
    binary, then CUDA runtime dirs, first on the library path."""
    env = dict(base)
    lib_dirs = [str(binary.parent), *map(str, _cuda_library_dirs())]
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
    return env


def _cuda_library_dirs() -> list[Path]:
    arch = platform.machine()
    dirs = [Path("/usr/local/cuda/lib64"), Path(f"/usr/local/cuda/targets/{arch}-linux/lib")]
    for site in map(Path, sys.path):
        nvidia = site / "nvidia"
        if nvidia.is_dir():
            dirs += sorted(nvidia.glob("*/lib"))
    return [d for d in dirs if d.is_dir()]
