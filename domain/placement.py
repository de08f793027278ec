"""Several models on one machine: what each holds, and which to evict for a new one (issue 12).

A model's footprint is what its plan says it holds on each device (a GPU's
weights, KV cache and reserve; system memory for a model on the CPU, plus
llama-server's host-side prompt cache). A load that does not fit what is
free evicts the least recently used idle, unpinned models, only as many as
it needs: the planner itself, given the memory each eviction would free,
says whether the load then fits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from llamagate.domain.gpus import GpuInfo
from llamagate.domain.planning import Plan

HOST = "host"
Footprint = Mapping[str, int]  # bytes by device: "host", "gpu0", "gpu1", ...


def gpu(index: int) -> str:
    return f"gpu{index}"


def footprint(plan: Plan, host_cache_bytes: int = 0) -> dict[str, int]:
    """What a model planned as ``plan`` holds: on each chosen GPU its share;
    without planned GPUs (the CPU, or llama-server's --fit on), system memory;
    on RPC workers, nothing here (a worker serves one llama-server at a time).
    ``host_cache_bytes``: llama-server's host-side prompt cache (--cache-ram)."""
    held: dict[str, int] = {}
    if plan.shares:
        for share in plan.shares:
            held[gpu(share.index)] = share.weights_bytes + share.kv_bytes + share.reserve_bytes
    elif not (plan.workers and plan.offload_all):  # on RPC workers, the layers hold none of this machine's memory
        held[HOST] = plan.weights_bytes + plan.kv_bytes
    if host_cache_bytes:
        held[HOST] = held.get(HOST, 0) + host_cache_bytes
    return held


def total(footprints: Iterable[Footprint]) -> dict[str, int]:
    """Device by device, the sum."""
    summed: dict[str, int] = {}
    for held in footprints:
        for device, n in held.items():
            summed[device] = summed.get(device, 0) + n
    return summed


def with_freed(gpus: Sequence[GpuInfo], host_free: int, freed: Footprint) -> tuple[list[GpuInfo], int]:
    """The memory there would be once ``freed`` is given back."""
    return ([GpuInfo(g.index, g.free_bytes + freed.get(gpu(g.index), 0)) for g in gpus],
            host_free + freed.get(HOST, 0))


@dataclass(frozen=True)
class Resident:
    """A model that holds memory now, as eviction sees it."""

    id: str
    held: Footprint
    last_used: float  # monotonic seconds
    in_flight: int = 0  # requests streaming or queued
    pinned: bool = False

    @property
    def evictable(self) -> bool:
        return not self.pinned and self.in_flight == 0


def evictions(residents: Sequence[Resident], fits: Callable[[Footprint], bool]) -> tuple[Resident, ...] | None:
    """The models to evict so that a load fits, or None when no choice does.

    ``fits(freed)`` says whether the load fits once ``freed`` is given back.
    Candidates are the idle, unpinned residents, least recently used first;
    the shortest such prefix that fits is taken, then any of it whose memory
    turns out not to be needed is kept (never more evicted than needed).
    Busy and pinned models are never chosen.
    """
    if fits({}):
        return ()
    candidates = sorted((r for r in residents if r.evictable), key=lambda r: (r.last_used, r.id))
    chosen: list[Resident] = []
    for candidate in candidates:
        chosen.append(candidate)
        if fits(total(r.held for r in chosen)):
            break
    else:
        return None
    for spare in reversed(chosen[:-1]):  # the most recently used first: the one most worth keeping
        rest = [r for r in chosen if r is not spare]
        if fits(total(r.held for r in rest)):
            chosen = rest
    return tuple(chosen)


def describe_evictions(chosen: Sequence[Resident]) -> str:
    """For the plan's reasons: which models a load evicts and why."""
    if not chosen:
        return ""
    names = ", ".join(f"{r.id} ({_mib(sum(r.held.values()))})" for r in chosen)
    return f"evicts {names}: the least recently used idle models whose memory the load needs"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"
