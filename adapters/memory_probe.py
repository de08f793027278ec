"""MemoryProbe: free GPU memory (probed fresh each call) and free system memory."""

from __future__ import annotations

import shutil
from collections.abc import Mapping

import psutil

from llamagate.adapters.gpu_probe import probe_gpus
from llamagate.domain.gpus import GpuInfo


class SystemMemory:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env  # the service's environment: its GPU visibility masks

    def gpus(self) -> list[GpuInfo]:
        return probe_gpus(self._env)

    def host_free_bytes(self) -> int:
        return int(psutil.virtual_memory().available)


def is_rocm() -> bool:
    """ROCm machines pin through HIP_VISIBLE_DEVICES as well (SPEC §6)."""
    return shutil.which("rocminfo") is not None or shutil.which("rocm-smi") is not None
