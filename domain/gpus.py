"""GPUs as the planner sees them, and the visibility masks that hide some (SPEC §6)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class GpuInfo:
    index: int  # physical: nvidia-smi/NVML order (PCI bus order)
    free_bytes: int
    total_bytes: int = 0
    name: str = ""
    uuid: str = ""


def visibility_mask(env: Mapping[str, str], *, rocm: bool = False) -> str | None:
    """The mask in force: None when unset (all GPUs visible).

    On ROCm HIP_VISIBLE_DEVICES wins, then ROCR_VISIBLE_DEVICES, then
    CUDA_VISIBLE_DEVICES (which HIP also honours).
    """
    names = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES") if rocm else ("CUDA_VISIBLE_DEVICES",)
    return next((env[name] for name in names if name in env), None)


def parse_mask(mask: str | None) -> list[str] | None:
    """Entries of a mask in order; None = no mask. Empty entries ("0,1,") are
    dropped, and an empty mask ("") hides every GPU."""
    if mask is None:
        return None
    return [entry.strip() for entry in mask.split(",") if entry.strip()]


def visible_gpus(gpus: Sequence[GpuInfo], mask: str | None) -> list[GpuInfo]:
    """The GPUs a process under ``mask`` may use, in the mask's order.

    Entries are physical indices or UUIDs (``GPU-…``, also as a prefix, as
    CUDA accepts). Like CUDA, an entry that matches nothing ends the list.
    """
    entries = parse_mask(mask)
    if entries is None:
        return sorted(gpus, key=lambda g: g.index)
    chosen: list[GpuInfo] = []
    for entry in entries:
        match = _match(gpus, entry)
        if match is None:
            break
        if match not in chosen:
            chosen.append(match)
    return chosen


def physical_index(mask: str | None, ordinal: int) -> int | None:
    """The physical index behind a runtime ordinal (torch's device number)."""
    entries = parse_mask(mask)
    if entries is None:
        return ordinal
    if ordinal >= len(entries) or not entries[ordinal].isdigit():
        return None
    return int(entries[ordinal])


def _match(gpus: Sequence[GpuInfo], entry: str) -> GpuInfo | None:
    if entry.isdigit():
        return next((g for g in gpus if g.index == int(entry)), None)
    return next((g for g in gpus if g.uuid and g.uuid.startswith(entry)), None)


def pin_environment(env: Mapping[str, str], indices: Sequence[int], *, rocm: bool = False) -> dict[str, str]:
    """A copy of ``env`` that pins a child to these physical GPUs.

    PCI_BUS_ID ordering makes CUDA number devices like nvidia-smi does;
    without it CUDA puts the fastest GPU first and the ids would not match.
    On ROCm, HIP_VISIBLE_DEVICES counts within ROCR_VISIBLE_DEVICES, so the
    latter is dropped for the physical ids to mean what they say.
    """
    ids = ",".join(str(i) for i in indices)
    pinned = dict(env) | {"CUDA_VISIBLE_DEVICES": ids, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if rocm:
        pinned["HIP_VISIBLE_DEVICES"] = ids
        pinned.pop("ROCR_VISIBLE_DEVICES", None)
    return pinned
