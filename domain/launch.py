"""What to start for a load (SPEC §8, §15): a LaunchSpec, as data.

How llama-server spells it (its flags) is ``adapters/llama_argv``'s business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING

from llamagate.domain.batching import MAX_BATCH, batch_size, estimated_speed, prompt_cost
from llamagate.domain.capabilities import (
    capabilities_from_template,
    launch_template_kwargs,
)
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.load_options import KvCacheType, LoadOptions, ModelMode, Pooling, Speculative
from llamagate.domain.load_plan import LoadPlan
from llamagate.domain.model_info import ModelInfo
from llamagate.domain.model_state import ModelState
from llamagate.domain.rpc_workers import check_addresses, normalized
from llamagate.domain.shards import model_id

if TYPE_CHECKING:  # ports imports this module
    from llamagate.domain.ports import TemplateRenderer


@dataclass(frozen=True)
class LaunchSpec:
    model_path: str
    context_length: int  # 0 = native
    parallel: int = 1
    threads: int = 0  # 0 = the engine decides
    cache_type: KvCacheType = KvCacheType.F16  # K and V alike
    offload_all: bool = False  # True: every layer on `gpus`; False: the engine fits what it can
    gpus: tuple[int, ...] = ()  # physical ids to pin the child to; () = as the service sees them
    chat_template: str = ""  # Jinja text overriding the model's own template
    template_kwargs: Mapping[str, bool | str] = field(default_factory=dict)  # the reasoning default (SPEC §3)
    speculative: Speculative = Speculative.OFF  # never used with a vision projector (SPEC §15)
    mmproj_path: str = ""
    batch_size: int = 0  # prompt tokens per decode (logical and physical batch); 0 = the engine's default
    mode: ModelMode = ModelMode.CHAT
    pooling: Pooling = Pooling.DEFAULT  # EMBEDDING only: RERANK always ranks
    host_cache_mib: int = 0  # llama-server's host-side prompt cache (--cache-ram), planned as host memory
    rpc_workers: tuple[str, ...] = ()  # host:port of the RPC workers that hold layers (with offload_all: all of them)


def launch_from_plan(load_plan: LoadPlan, options: LoadOptions, *, prompt_speed: float | None = None,
                     decode_budget_s: float = 0.0, host_threads: int = 1,
                     renderer: TemplateRenderer | None = None, host_cache_mib: int = 0) -> tuple[ModelInfo, LaunchSpec]:
    """The ModelInfo a load will report and the launch that realises its plan.

    ``renderer`` renders the chat template to read its capabilities (blocking,
    bounded); without one, the string rules of SPEC §3 alone decide.

    The batch is the caller's, else chosen so one decode lasts at most
    ``decode_budget_s``: from ``prompt_speed`` (the slowest measured on this
    model), else from the estimate for ``host_threads`` CPU threads at the
    slot's full context, else a device prior. A budget of 0 leaves the
    engine's default.
    """
    facts, plan = load_plan.facts, load_plan.plan
    mid = model_id(PurePath(facts.path).name)
    template = options.chat_template or facts.chat_template
    caps = capabilities_from_template(template, mid, vision=bool(options.mmproj_path), renderer=renderer)
    # An embedding or rerank model never generates: nothing drafts, and no
    # chat template is rendered (a rerank prompt is the model's own "rerank"
    # template, or query and document between its special tokens).
    chat = options.mode is ModelMode.CHAT
    info = ModelInfo(
        id=mid,
        path=facts.path,
        architecture=facts.architecture,
        native_context_length=facts.native_context_length,
        context_length=plan.context_length,
        capabilities=caps,
        cache_type=options.cache_type,
        state=ModelState.LOADING,
        parallel=options.parallel,
        has_chat_template=bool(template),
        size_bytes=facts.size_bytes,
        mode=options.mode,
    )
    spec = LaunchSpec(
        model_path=facts.path,
        context_length=plan.context_length,
        parallel=options.parallel,
        threads=options.threads,
        cache_type=options.cache_type,
        offload_all=plan.offload_all,
        gpus=plan.gpus,
        chat_template=options.chat_template if chat else "",
        template_kwargs=launch_template_kwargs(caps, mid) if chat else {},
        speculative=options.speculative if chat and not options.mmproj_path else Speculative.OFF,
        mmproj_path=options.mmproj_path,
        batch_size=_batch(load_plan, options, prompt_speed, decode_budget_s, host_threads),
        mode=options.mode,
        pooling=options.pooling,
        host_cache_mib=host_cache_mib,
        rpc_workers=normalized(options.rpc_workers),
    )
    return info, spec


def _batch(load_plan: LoadPlan, options: LoadOptions, prompt_speed: float | None, budget_s: float,
           host_threads: int) -> int:
    if options.batch_size:
        return options.batch_size
    if options.mode is not ModelMode.CHAT:
        # llama-server takes each input whole in one physical batch (bidirectional
        # attention, mean or CLS pooling: it refuses to split one), so the batch
        # bounds the longest input: a slot's context, within MAX_BATCH. A cancel
        # cannot stop an input midway anyway, so a small batch would buy nothing.
        return min(load_plan.plan.context_length // max(options.parallel, 1), MAX_BATCH)
    if budget_s <= 0:
        return 0
    on_gpu = bool(load_plan.plan.gpus)
    speed = prompt_speed if prompt_speed is not None else prior_speed(load_plan, options, host_threads)
    return batch_size(speed, budget_s, on_gpu=on_gpu)


def prior_speed(load_plan: LoadPlan, options: LoadOptions, host_threads: int) -> float | None:
    """The estimated prompt speed at a full slot before anything was measured
    (None on planned GPUs, which take the GPU prior batch)."""
    if load_plan.plan.gpus:
        return None
    cost = prompt_cost(load_plan.facts)
    slot = load_plan.plan.context_length // max(options.parallel, 1)
    threads = options.threads if options.threads > 0 else host_threads
    return estimated_speed(cost, slot, threads) if cost is not None else None


def check_load_options(options: LoadOptions) -> None:
    """Raise InvalidArgument for options no load could use, before anything is read."""
    if options.parallel < 1:
        raise InvalidArgument(f"parallel must be at least 1, got {options.parallel}")
    if options.threads < 0:
        raise InvalidArgument(f"threads must be 0 (automatic) or positive, got {options.threads}")
    if options.context_length < 0:
        raise InvalidArgument(f"context_length must be 0 (automatic) or positive, got {options.context_length}")
    if not 0 <= options.batch_size <= MAX_BATCH:
        raise InvalidArgument(f"batch_size must be 0 (automatic) or 1..{MAX_BATCH}, got {options.batch_size}")
    _check_pooling(options.mode, options.pooling)
    check_addresses(options.rpc_workers)


def _check_pooling(mode: ModelMode, pooling: Pooling) -> None:
    field = "options.pooling"
    if pooling is Pooling.DEFAULT or (mode, pooling) == (ModelMode.RERANK, Pooling.RANK):
        return
    if pooling is Pooling.RANK:
        raise InvalidArgument("rank pooling scores (query, document) pairs: load with mode rerank", field=field)
    if mode is not ModelMode.EMBEDDING:
        raise InvalidArgument(f"pooling is for mode embedding; a {mode.value} model takes the default",
                              field=field)
    if pooling is Pooling.NONE:
        # Pooling none leaves one vector per token; an embedding is one vector per text.
        raise InvalidArgument("pooling none gives a vector per token, not one per text: choose mean, cls or last "
                              "(or the default, what the model says)", field=field)
