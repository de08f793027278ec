"""Context fitting and GPU selection before launch (SPEC §5, §6), explained in words.

Pure: the GPUs, the weights' size and a KV-size function come in; a Plan
comes out. Who measures free memory, and how KV bytes are computed, is not
this module's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from llamagate.domain.gpus import MIB, GpuInfo
from llamagate.domain.rpc_workers import WorkerReport

BUDGET_FRACTION = 0.9  # the rest: compute buffers, CUDA context, flash-attn workspace
CONTEXT_STEP = 256
MIN_CONTEXT = 4096

KvBytes = Callable[[int], int]  # context length -> KV-cache bytes (all slots)


@dataclass(frozen=True)
class GpuShare:
    index: int
    free_bytes: int
    budget_bytes: int
    weights_bytes: int
    kv_bytes: int
    reserve_bytes: int


@dataclass(frozen=True)
class WorkerShare:
    """One device of an RPC worker, and what the plan puts on it."""

    address: str  # the worker, host:port
    device: int  # its device number on the worker
    free_bytes: int  # a CPU worker's RAM: see memory_is_ram
    total_bytes: int
    memory_is_ram: bool  # the worker reports its RAM (free = total), not what is free of it
    budget_bytes: int
    weights_bytes: int
    kv_bytes: int


@dataclass(frozen=True)
class Plan:
    context_length: int
    gpus: tuple[int, ...]  # physical ids to pin; empty on CPU or when falling back
    offload_all: bool  # True: -ngl -1 on `gpus`; False: llama-server's --fit on
    fits: bool  # weights + KV fit the budget of the chosen memory
    weights_bytes: int
    kv_bytes: int
    shares: tuple[GpuShare, ...]
    ceiling_context: int  # the largest context any GPU subset holds (for a UI)
    reasons: tuple[str, ...]
    workers: tuple[WorkerShare, ...] = ()  # the RPC workers' devices, when the load names workers


def budget(free_bytes: Sequence[int]) -> int:
    return int(sum(free_bytes) * BUDGET_FRACTION)


def context_floor(requested: int) -> int:
    return min(MIN_CONTEXT, requested)


def fit_context(budget_bytes: int, weights: int, kv_bytes: KvBytes, requested: int) -> tuple[int, bool]:
    """The largest context <= requested whose KV fits beside the weights.

    Returns (context, fits). A multiple of 256 unless it is the floor,
    min(4096, requested); never below it even when that does not fit.
    """
    if weights + kv_bytes(requested) <= budget_bytes:
        return requested, True
    floor = context_floor(requested)
    room = budget_bytes - weights
    if room < 0 or kv_bytes(floor) > room:
        return (requested if room < 0 else floor), False
    low, high = floor, requested  # kv(low) fits, kv(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if kv_bytes(middle) <= room else (low, middle)
    return max(floor, low // CONTEXT_STEP * CONTEXT_STEP), True


def _ranked(gpus: Sequence[GpuInfo]) -> list[GpuInfo]:
    return sorted(gpus, key=lambda g: (-g.free_bytes, g.index))


def select_gpus(gpus: Sequence[GpuInfo], need: int) -> list[GpuInfo]:
    """One GPU if its budget holds ``need``, else the most-free GPUs until
    their budgets add up to it; [] when all of them together cannot."""
    chosen: list[GpuInfo] = []
    for gpu in _ranked(gpus):
        chosen.append(gpu)
        if budget([g.free_bytes for g in chosen]) >= need:
            return chosen
    return []


def plan_explicit(gpus: Sequence[GpuInfo], weights: int, kv_bytes: KvBytes, context: int) -> Plan:
    """An explicit context is honoured; it gets as many GPUs as it needs."""
    kv = kv_bytes(context)
    chosen = select_gpus(gpus, weights + kv)
    reasons = [f"context {context} was asked for: honoured"]
    if chosen:
        reasons.append(f"{_ids(chosen)}: {len(chosen)} GPU(s) whose 90% free memory holds weights + KV ({_mib(weights + kv)})")
        return _plan(context, chosen, True, True, weights, kv, gpus, reasons)
    reasons.append(f"no GPU set holds weights + KV ({_mib(weights + kv)}): llama-server's --fit on decides the offload")
    return _plan(context, [], False, False, weights, kv, gpus, reasons)


def plan_automatic(gpus: Sequence[GpuInfo], weights: int, kv_bytes: KvBytes, native: int) -> Plan:
    """Context 0 = automatic: fewer GPUs are preferred over more context."""
    ranked = _ranked(gpus)
    for count in range(1, len(ranked) + 1):
        pool = ranked[:count]
        context, fits = fit_context(budget([g.free_bytes for g in pool]), weights, kv_bytes, native)
        if fits:
            why = "the native context" if context == native else f"the largest that fits (native {native})"
            reasons = [f"context {context}: {why}",
                       f"{_ids(pool)}: the fewest GPUs that hold the weights ({_mib(weights)}) and that KV"]
            return _plan(context, pool, True, True, weights, kv_bytes(context), gpus, reasons)
    context = context_floor(native)
    reasons = [f"no GPU set holds the weights ({_mib(weights)}) with even {context} tokens of KV",
               f"context {context} with llama-server's --fit on (layers that do not fit stay in RAM)"]
    return _plan(context, [], False, False, weights, kv_bytes(context), gpus, reasons)


def ceiling_context(gpus: Sequence[GpuInfo], weights: int, kv_bytes: KvBytes, native: int) -> int:
    """The largest context any number of the most-free GPUs holds; 4096 if none holds the weights."""
    ranked = _ranked(gpus)
    best = 0
    for count in range(1, len(ranked) + 1):
        context, fits = fit_context(budget([g.free_bytes for g in ranked[:count]]), weights, kv_bytes, native)
        if fits:
            best = max(best, context)
    return best or MIN_CONTEXT


def plan_host(free_bytes: int, weights: int, kv_bytes: KvBytes, requested: int, native: int) -> Plan:
    """No GPU: the same fitting against free system memory, all on the CPU."""
    wanted = requested or native
    context, fits = (wanted, weights + kv_bytes(wanted) <= budget([free_bytes])) if requested else \
        fit_context(budget([free_bytes]), weights, kv_bytes, native)
    reasons = ["no GPU is visible: the model runs on the CPU, in system memory",
               f"context {context}" + (" was asked for: honoured" if requested else f" (native {native})"),
               f"weights + KV {_mib(weights + kv_bytes(context))} of {_mib(budget([free_bytes]))} usable memory"
               + ("" if fits else ": does not fit, expect swapping or a failed load")]
    return Plan(context, (), False, fits, weights, kv_bytes(context), (), context, tuple(reasons))


def _plan(context: int, pool: Sequence[GpuInfo], offload: bool, fits: bool, weights: int, kv: int,
          gpus: Sequence[GpuInfo], reasons: list[str]) -> Plan:
    chosen = sorted(pool, key=lambda g: g.index)  # pinned in PCI order: device 0 is the lowest id
    total = sum(budget([g.free_bytes]) for g in chosen) or 1
    shares = tuple(
        GpuShare(
            index=g.index,
            free_bytes=g.free_bytes,
            budget_bytes=budget([g.free_bytes]),
            weights_bytes=weights * budget([g.free_bytes]) // total,
            kv_bytes=kv * budget([g.free_bytes]) // total,
            reserve_bytes=g.free_bytes - budget([g.free_bytes]),
        )
        for g in chosen
    )
    return Plan(context, tuple(g.index for g in chosen), offload, fits, weights, kv, shares, 0, tuple(reasons))


def _ids(gpus: Sequence[GpuInfo]) -> str:
    return "GPU " + ",".join(str(g.index) for g in gpus)


def _mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB"


def plan_over_workers(gpus: Sequence[GpuInfo], workers: Sequence[WorkerReport], weights: int, kv_bytes: KvBytes,
                      requested: int, native: int) -> Plan:
    """RPC workers named: llama-server spreads the layers over every device it
    sees, this machine's GPUs and each worker's, in proportion to their free
    memory (llama.cpp's default split); so they are planned as one pool, and
    each gets its proportional share. Without a GPU here every layer still
    goes to the workers ("-ngl all"), never to this machine's CPU."""
    remote = [(w.address, d) for w in workers if w.usable for d in w.devices]
    room = budget([g.free_bytes for g in gpus] + [d.free_bytes for _, d in remote])
    if requested:
        context, fits = requested, weights + kv_bytes(requested) <= room
    else:
        context, fits = fit_context(room, weights, kv_bytes, native)
        context = context if fits else context_floor(native)  # as without workers: --fit on gets the floor
    kv = kv_bytes(context)
    whole = room or 1

    def part(n: int, free: int) -> int:
        return n * budget([free]) // whole if fits else 0

    shares = tuple(GpuShare(g.index, g.free_bytes, budget([g.free_bytes]), part(weights, g.free_bytes),
                            part(kv, g.free_bytes), g.free_bytes - budget([g.free_bytes]))
                   for g in sorted(gpus, key=lambda g: g.index))
    on_workers = tuple(WorkerShare(address, d.index, d.free_bytes, d.total_bytes, d.memory_is_ram,
                                   budget([d.free_bytes]), part(weights, d.free_bytes), part(kv, d.free_bytes))
                       for address, d in remote)
    devices = f"{len(remote)} device(s) on {len({a for a, _ in remote})} RPC worker(s)" + (
        f" and {_ids(gpus)}" if gpus else "")
    reasons = [f"context {context}" + (" was asked for: honoured" if requested else
                                        (" (the native context)" if context == native else f" (native {native})")),
               f"weights + KV {_mib(weights + kv)} of {_mib(room)} usable on {devices}"
               + (": every layer on them, split in proportion to their memory" if fits else
                  ": does not fit, llama-server's --fit on places what fits, the rest stays in this machine's RAM")]
    reasons += [w.describe() + ("" if w.usable else ": its memory is not counted, and a load now would fail")
                for w in workers]
    if any(d.memory_is_ram for _, d in remote):
        reasons.append("a CPU worker's figure is its RAM: ggml reports no free memory for a CPU, so what its "
                       "machine's other processes use is not subtracted")
    ceiling, holds = fit_context(room, weights, kv_bytes, native)
    return Plan(context, tuple(s.index for s in shares) if fits else (), fits, fits, weights, kv,
                shares if fits else (), ceiling if holds else MIN_CONTEXT, tuple(reasons), on_workers)


def make_plan(
    gpus: Sequence[GpuInfo], host_free_bytes: int, weights: int, kv_bytes: KvBytes, requested: int, native: int,
    workers: Sequence[WorkerReport] = (),
) -> Plan:
    """The plan for a load: ``requested`` 0 means automatic (up to ``native``);
    ``workers``: the RPC workers the load names, as probed."""
    if workers:
        return plan_over_workers(gpus, workers, weights, kv_bytes, requested, native)
    if not gpus:
        return plan_host(host_free_bytes, weights, kv_bytes, requested, native)
    plan = plan_explicit(gpus, weights, kv_bytes, requested) if requested else plan_automatic(gpus, weights, kv_bytes, native)
    return replace(plan, ceiling_context=ceiling_context(gpus, weights, kv_bytes, native))
