"""The llama-server command line for a load (SPEC §8, §15), built as data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pathlib import PurePath

from llamagate.domain.capabilities import capabilities_from_template, launch_template_kwargs
from llamagate.domain.load_plan import LoadPlan
from llamagate.domain.model import KvCacheType, LoadOptions, ModelInfo, ModelState, Speculative
from llamagate.domain.shards import model_id

# llama.cpp renamed the ngram-mod knobs; the values are SPEC §15's.
_SPECULATIVE_FLAGS: dict[Speculative, tuple[str, ...]] = {
    Speculative.OFF: (),
    Speculative.DEFAULT: ("--spec-default",),
    Speculative.NGRAM_SIMPLE: ("--spec-type", "ngram-simple"),
    Speculative.NGRAM_MOD: (
        "--spec-type", "ngram-mod",
        "--spec-ngram-mod-n-match", "24",
        "--spec-ngram-mod-n-min", "48",
        "--spec-ngram-mod-n-max", "64",
    ),
}


@dataclass(frozen=True)
class LaunchSpec:
    model_path: str
    port: int
    context_length: int  # 0 = native
    parallel: int = 1
    threads: int = 0  # 0 = auto (-1 for llama-server)
    cache_type: KvCacheType = KvCacheType.F16
    offload_all: bool = False  # True: -ngl -1 on planned GPUs; False: --fit on
    chat_template_file: str | None = None
    template_kwargs: dict[str, object] = field(default_factory=dict)
    speculative: Speculative = Speculative.OFF
    mmproj_path: str | None = None
    host: str = "127.0.0.1"
    gpus: tuple[int, ...] = ()  # physical ids to pin the child to; () = as the service sees them


def server_arguments(spec: LaunchSpec) -> list[str]:
    """Arguments after the binary. ``--no-context-shift`` makes a full context an
    error rather than silently dropping the start of the conversation."""
    args = [
        "-m", spec.model_path,
        "--host", spec.host,
        "--port", str(spec.port),
        "-c", str(spec.context_length),
        "--parallel", str(spec.parallel),
        "--flash-attn", "on",
        "--no-context-shift",
        "--jinja",
        "--no-webui",
        "--threads", str(spec.threads if spec.threads > 0 else -1),
        "--cache-type-k", spec.cache_type.value,
        "--cache-type-v", spec.cache_type.value,
    ]
    args += ["-ngl", "-1"] if spec.offload_all else ["--fit", "on"]
    if spec.chat_template_file:
        args += ["--chat-template-file", spec.chat_template_file]
    if spec.template_kwargs:
        args += ["--chat-template-kwargs", json.dumps(spec.template_kwargs, sort_keys=True)]
    if spec.mmproj_path:
        args += ["--mmproj", spec.mmproj_path]
    else:  # never speculate on vision models (SPEC §15)
        args += _SPECULATIVE_FLAGS[spec.speculative]
    return args


def launch_from_plan(load_plan: LoadPlan, options: LoadOptions) -> tuple[ModelInfo, LaunchSpec]:
    """The ModelInfo a load will report and the command line that realises its plan."""
    facts, plan = load_plan.facts, load_plan.plan
    mid = model_id(PurePath(facts.path).name)
    template = options.chat_template or facts.chat_template
    caps = capabilities_from_template(template, mid, vision=bool(options.mmproj_path))
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
    )
    spec = LaunchSpec(
        model_path=facts.path,
        port=0,  # chosen at spawn time, under the lock
        context_length=plan.context_length,
        parallel=options.parallel,
        threads=options.threads,
        cache_type=options.cache_type,
        offload_all=plan.offload_all,
        template_kwargs=launch_template_kwargs(caps, mid),
        speculative=options.speculative,
        mmproj_path=options.mmproj_path or None,
        gpus=plan.gpus,
    )
    return info, spec
