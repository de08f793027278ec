"""Helpers for the KV-cache accuracy tests: synthetic GGUFs from llama.cpp's own
test-llama-archs, and what the real llama-server says it allocated."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from llamagate.adapters.engine_discovery import child_environment
from llamagate.adapters.engine_install import installed
from llamagate.server.settings import Settings

# llama_kv_cache / llama_memory_recurrent constructors' summary lines
_KV_LINE = re.compile(
    r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\), "
    r"K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB"
)
_RS_LINE = re.compile(
    r"llama_memory_recurrent: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+) seqs +(\d+) rs_seq\), "
    r"R \(f32\): +([\d.]+) MiB, S \(f32\): +([\d.]+) MiB"
)
_CREATING = re.compile(r"creating +(non-SWA|SWA|main|indexer) KV cache")
_DONE = re.compile(r"n_slots = |exiting|failed to load|error loading model")


@dataclass(frozen=True)
class KvLine:
    """One ``llama_kv_cache: size = ...`` line; ``role`` from the line before it."""

    role: str  # "main", "non-SWA", "SWA" or "indexer"
    cells: int
    layers: int
    streams: int
    k_mib: float
    v_mib: float


@dataclass(frozen=True)
class RsLine:
    cells: int
    r_mib: float
    s_mib: float


@dataclass(frozen=True)
class ServerMemory:
    kv: list[KvLine]
    recurrent: list[RsLine]
    log: str

    def kv_role(self, role: str) -> KvLine | None:
        return next((line for line in self.kv if line.role == role), None)


def parse_memory(log: str) -> ServerMemory:
    kv: list[KvLine] = []
    recurrent: list[RsLine] = []
    role = "main"
    for line in log.splitlines():
        if created := _CREATING.search(line):
            role = created.group(1)
        elif m := _KV_LINE.search(line):
            kv.append(KvLine(role, int(m[2]), int(m[3]), int(m[5]), float(m[7]), float(m[9])))
            role = "main"
        elif m := _RS_LINE.search(line):
            recurrent.append(RsLine(int(m[2]), float(m[6]), float(m[7])))
    return ServerMemory(kv, recurrent, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_memory(server: Path, model: Path, *, context: int, parallel: int, extra: tuple[str, ...] = (),
                  timeout: float = 60.0) -> ServerMemory:
    """Start llama-server, read its log until the slots exist (the caches are
    allocated before), stop it, and return what it printed about its caches."""
    argv = [str(server), "-m", str(model), "--host", "127.0.0.1", "--port", str(free_port()),
            "-c", str(context), "--parallel", str(parallel), "--flash-attn", "on", "--no-webui",
            "--fit", "off", "-t", "1", "-lv", "4", *extra]  # -lv 4 prints the cache summaries
    lines: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=child_environment(server, os.environ))
    watchdog = threading.Timer(timeout, proc.kill)  # a server that hangs silently still ends the read
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if _DONE.search(line):
                break
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(timeout=30)
    return parse_memory("".join(lines))


def archs_tool() -> Path | None:
    """The built test-llama-archs (``llamagate engine install --test-tools``)."""
    cache = Settings.from_env(os.environ).cache_dir
    for backend in ("cuda", "cpu"):
        candidate = installed(cache, backend, "test-llama-archs")
        if candidate.is_file():
            return candidate
    return None


def write_synthetic_models(tool: Path, archs: list[str], out: Path) -> dict[str, str]:
    """Run ``test-llama-archs -a ARCH -o out`` per architecture; returns its log per arch
    (the generated files are ``out/ARCH-dense.gguf`` or ``out/ARCH-moe.gguf``)."""
    logs = {}
    for arch in archs:
        done = subprocess.run([str(tool), "-a", arch, "-o", str(out), "-s", "1", "-v", "3"],
                              capture_output=True, text=True, timeout=120, check=False)
        logs[arch] = done.stdout + done.stderr
    return logs


def synthetic_model(out: Path, arch: str) -> Path | None:
    for kind in ("dense", "moe"):
        candidate = out / f"{arch}-{kind}.gguf"
        if candidate.is_file():
            return candidate
    return None
