"""Free GPU memory: NVML first, then nvidia-smi, then torch (which covers ROCm).

Each probe is two parts: one that talks to the driver and a pure parser or
mapper the tests feed with literal data (SPEC §6).
"""

from __future__ import annotations

import importlib
import logging
import subprocess
from collections.abc import Callable, Mapping
from types import ModuleType

from llamagate.domain.gpus import (
    MIB,
    GpuInfo,
    physical_index,
    visibility_mask,
    visible_gpus,
)

log = logging.getLogger(__name__)

SMI_QUERY = ["nvidia-smi", "--query-gpu=index,uuid,memory.free,memory.total,name", "--format=csv,noheader,nounits"]


class ProbeUnavailable(Exception):
    """This probe cannot see GPUs here (no driver, no tool, no library)."""


def probe_gpus(env: Mapping[str, str], probes: tuple[Callable, ...] | None = None) -> list[GpuInfo]:
    """The visible GPUs with their free memory, from the first probe that works
    (``env``: the service's environment, whose masks hide some GPUs)."""
    for probe in probes or (nvml_probe, nvidia_smi_probe, torch_probe):
        try:
            return probe(env)
        except ProbeUnavailable as why:
            log.debug("%s: %s", probe.__name__, why)
    return []


# ---------------------------------------------------------------- NVML


def nvml_probe(env: Mapping[str, str], library: ModuleType | None = None) -> list[GpuInfo]:
    nvml = library or importlib.import_module("pynvml")  # nvidia-ml-py
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        raise ProbeUnavailable(f"NVML: {error}") from error
    try:
        gpus = [_nvml_gpu(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as error:
        raise ProbeUnavailable(f"NVML: {error}") from error
    finally:
        nvml.nvmlShutdown()
    return visible_gpus(gpus, visibility_mask(env))


def _nvml_gpu(nvml: ModuleType, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return GpuInfo(
        index=index,
        free_bytes=int(memory.free),
        total_bytes=int(memory.total),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------- nvidia-smi


def nvidia_smi_probe(env: Mapping[str, str], run: Callable[[list[str]], str] | None = None) -> list[GpuInfo]:
    try:
        output = (run or _run)(SMI_QUERY)
    except (OSError, subprocess.SubprocessError) as error:
        raise ProbeUnavailable(f"nvidia-smi: {error}") from error
    return visible_gpus(parse_nvidia_smi_csv(output), visibility_mask(env))


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20).stdout


def parse_nvidia_smi_csv(text: str) -> list[GpuInfo]:
    """``index, uuid, free MiB, total MiB, name`` rows; rows that do not parse
    (e.g. "[N/A]" memory on some MIG setups) are skipped."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5:
            continue
        try:
            index, free, total = int(fields[0]), int(fields[2]), int(fields[3])
        except ValueError:
            continue
        gpus.append(GpuInfo(index, free * MIB, total * MIB, ",".join(fields[4:]), fields[1]))
    return sorted(gpus, key=lambda g: g.index)


# ---------------------------------------------------------------- torch


def torch_probe(env: Mapping[str, str], library: ModuleType | None = None) -> list[GpuInfo]:
    try:
        torch = library or importlib.import_module("torch")
    except ImportError as error:
        raise ProbeUnavailable("torch is not installed") from error
    if not torch.cuda.is_available():
        raise ProbeUnavailable("torch sees no CUDA/ROCm device")
    rocm = bool(getattr(torch.version, "hip", None))
    mask = visibility_mask(env, rocm=rocm)
    gpus = []
    for ordinal in range(torch.cuda.device_count()):
        index = physical_index(mask, ordinal)
        if index is None:  # a UUID mask: torch cannot tell us the physical id
            index = ordinal
        free, total = torch.cuda.mem_get_info(ordinal)
        gpus.append(GpuInfo(index, int(free), int(total), torch.cuda.get_device_name(ordinal)))
    return sorted(gpus, key=lambda g: g.index)
