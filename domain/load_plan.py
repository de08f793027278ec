"""The plan for one load: the model's memory needs meet the memory there is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from llamagate.domain.errors import InvalidArgument
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.kv_cache import KvEstimate, kv_cache_bytes
from llamagate.domain.model import LoadOptions, ModelFacts
from llamagate.domain.planning import MIN_CONTEXT, Plan, make_plan


@dataclass(frozen=True)
class LoadPlan:
    facts: ModelFacts
    plan: Plan
    kv: KvEstimate | None  # None when the header lacks what an estimate needs
    simulated: bool = False  # planned for GPUs the caller described


def plan_load(
    facts: ModelFacts,
    options: LoadOptions,
    gpus: Sequence[GpuInfo],
    host_free_bytes: int,
    *,
    projector_bytes: int = 0,
    simulated: bool = False,
) -> LoadPlan:
    native = facts.native_context_length or MIN_CONTEXT
    weights = facts.size_bytes + projector_bytes
    if facts.shape is None:
        context = options.context_length or native
        why = (f"the header lacks the shape a KV estimate needs ({facts.shape_error}): "
               f"context {context} unfitted, llama-server's --fit on decides the offload")
        plan = Plan(context, (), False, False, weights, 0, (), context, (why,))
        return LoadPlan(facts, plan, None, simulated)

    def kv_at(context: int) -> KvEstimate:
        return _kv(facts, options, context)

    plan = make_plan(gpus, host_free_bytes, weights, lambda c: kv_at(c).total_bytes,
                     options.context_length, native)
    return LoadPlan(facts, plan, kv_at(plan.context_length), simulated)


def check_plannable(facts: ModelFacts, options: LoadOptions) -> None:
    """Raise InvalidArgument now for options no plan can satisfy, so a bad
    request fails before the loaded model is stopped."""
    if facts.shape is not None:
        _kv(facts, options, options.context_length or facts.native_context_length or MIN_CONTEXT)


def _kv(facts: ModelFacts, options: LoadOptions, context: int) -> KvEstimate:
    try:
        return kv_cache_bytes(facts.shape, context_length=context, parallel=options.parallel,
                              cache_type_k=options.cache_type, cache_type_v=options.cache_type)
    except ValueError as error:  # e.g. a context too small to split over the slots
        raise InvalidArgument(f"{facts.architecture} with these options: {error}") from error
