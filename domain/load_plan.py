"""The plan for one load: the model's memory needs meet the memory there is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llamagate.domain.errors import Cancelled, InvalidArgument
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.kv_cache import KvEstimate, kv_cache_bytes
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.model_facts import ModelFacts
from llamagate.domain.model_shape import ModelShape, shape_from_hyperparameters
from llamagate.domain.planning import MIN_CONTEXT, Plan, make_plan
from llamagate.domain.rpc_workers import WorkerReport


@dataclass(frozen=True)
class LoadPlan:
    facts: ModelFacts
    plan: Plan
    kv: KvEstimate | None  # None when the header lacks what an estimate needs
    simulated: bool = False  # planned for GPUs the caller described
    workers: tuple[WorkerReport, ...] = ()  # the RPC workers the load names, as probed


def plan_load(
    facts: ModelFacts,
    options: LoadOptions,
    gpus: Sequence[GpuInfo],
    host_free_bytes: int,
    *,
    projector_bytes: int = 0,
    simulated: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    workers: Sequence[WorkerReport] = (),
) -> LoadPlan:
    """The plan for loading ``facts`` with ``options`` (on ``workers``, the RPC
    workers its options name, as probed). Raises InvalidModel for
    hyperparameters out of bounds, InvalidArgument for options no plan fits,
    Cancelled as soon as ``should_stop()`` says its caller went away."""
    native = facts.native_context_length or MIN_CONTEXT
    weights = facts.size_bytes + projector_bytes
    shape, missing = _shape(facts)
    if shape is None:
        context = options.context_length or native
        why = (f"the header lacks the shape a KV estimate needs ({missing}): "
               f"context {context} unfitted, llama-server's --fit on decides the offload")
        plan = Plan(context, (), False, False, weights, 0, (), context, (why,))
        return LoadPlan(facts, plan, None, simulated, tuple(workers))

    estimates: dict[int, KvEstimate] = {}  # the search asks for some contexts more than once

    def kv_at(context: int) -> KvEstimate:
        if should_stop():
            raise Cancelled("planning stopped: its caller went away")
        if context not in estimates:
            estimates[context] = _kv(shape, facts.architecture, options, context)
        return estimates[context]

    plan = make_plan(gpus, host_free_bytes, weights, lambda c: kv_at(c).total_bytes,
                     options.context_length, native, workers)
    return LoadPlan(facts, plan, kv_at(plan.context_length), simulated, tuple(workers))


def check_plannable(facts: ModelFacts, options: LoadOptions) -> None:
    """Raise InvalidModel (hyperparameters out of bounds) or InvalidArgument
    (options no plan can satisfy) now, so a bad request fails before the
    loaded model is stopped."""
    shape, _ = _shape(facts)
    if shape is not None:
        _kv(shape, facts.architecture, options,
            options.context_length or facts.native_context_length or MIN_CONTEXT)


def _shape(facts: ModelFacts) -> tuple[ModelShape | None, str]:
    """The KV-relevant shape, or None and why when the header lacks it.
    InvalidModel (a value out of bounds) goes up: such a file is refused."""
    try:
        return shape_from_hyperparameters(facts.hyperparameters, facts.architecture), ""
    except ValueError as error:
        return None, str(error)


def _kv(shape: ModelShape, architecture: str, options: LoadOptions, context: int) -> KvEstimate:
    try:
        return kv_cache_bytes(shape, context_length=context, parallel=options.parallel,
                              cache_type_k=options.cache_type, cache_type_v=options.cache_type)
    except ValueError as error:  # e.g. a context too small to split over the slots
        raise InvalidArgument(f"{architecture} with these options: {error}") from error
