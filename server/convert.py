"""Protobuf messages <-> domain dataclasses. No logic beyond the mapping."""

from __future__ import annotations

from dataclasses import asdict

from llamagate.application.registry import ModelEntry
from llamagate.domain.audio_codecs import AudioCodec
from llamagate.domain.capabilities import Capabilities, ReasoningStyle
from llamagate.domain.embeddings import Embeddings, EmbedRequest, Ranking, RerankRequest
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.hub import HubSource
from llamagate.domain.hub_load import DownloadProgress, HubModel
from llamagate.domain.kv_cache import KvEstimate
from llamagate.domain.load_options import KvCacheType, LoadOptions, ModelMode, Pooling, Speculative
from llamagate.domain.load_plan import LoadPlan
from llamagate.domain.model_config import check_model_id
from llamagate.domain.model_info import LoadEvent, LoadPhase, ModelInfo
from llamagate.domain.model_state import ModelState
from llamagate.domain.planning import WorkerShare
from llamagate.domain.rpc_workers import WorkerReport, WorkerState
from llamagate.domain.speech import describe as describe_codec
from llamagate.v1 import llamagate_pb2 as pb

_CACHE = {
    pb.KV_CACHE_TYPE_UNSPECIFIED: KvCacheType.F16,
    pb.KV_CACHE_TYPE_F32: KvCacheType.F32,
    pb.KV_CACHE_TYPE_F16: KvCacheType.F16,
    pb.KV_CACHE_TYPE_BF16: KvCacheType.BF16,
    pb.KV_CACHE_TYPE_Q8_0: KvCacheType.Q8_0,
    pb.KV_CACHE_TYPE_Q5_1: KvCacheType.Q5_1,
    pb.KV_CACHE_TYPE_Q5_0: KvCacheType.Q5_0,
    pb.KV_CACHE_TYPE_Q4_1: KvCacheType.Q4_1,
    pb.KV_CACHE_TYPE_Q4_0: KvCacheType.Q4_0,
    pb.KV_CACHE_TYPE_IQ4_NL: KvCacheType.IQ4_NL,
}
_CACHE_TO_PB = {v: k for k, v in _CACHE.items() if k != pb.KV_CACHE_TYPE_UNSPECIFIED}
_SPECULATIVE = {
    pb.SPECULATIVE_TYPE_UNSPECIFIED: Speculative.OFF,
    pb.SPECULATIVE_TYPE_OFF: Speculative.OFF,
    pb.SPECULATIVE_TYPE_DEFAULT: Speculative.DEFAULT,
    pb.SPECULATIVE_TYPE_NGRAM_SIMPLE: Speculative.NGRAM_SIMPLE,
    pb.SPECULATIVE_TYPE_NGRAM_MOD: Speculative.NGRAM_MOD,
}
_MODE = {
    pb.MODEL_MODE_UNSPECIFIED: ModelMode.CHAT,
    pb.MODEL_MODE_CHAT: ModelMode.CHAT,
    pb.MODEL_MODE_EMBEDDING: ModelMode.EMBEDDING,
    pb.MODEL_MODE_RERANK: ModelMode.RERANK,
}
_MODE_TO_PB = {v: k for k, v in _MODE.items() if k != pb.MODEL_MODE_UNSPECIFIED}
_POOLING = {
    pb.POOLING_UNSPECIFIED: Pooling.DEFAULT,
    pb.POOLING_NONE: Pooling.NONE,
    pb.POOLING_MEAN: Pooling.MEAN,
    pb.POOLING_CLS: Pooling.CLS,
    pb.POOLING_LAST: Pooling.LAST,
}
_PHASE = {
    LoadPhase.RESOLVING: pb.LOAD_PHASE_RESOLVING,
    LoadPhase.PLANNING: pb.LOAD_PHASE_PLANNING,
    LoadPhase.STARTING: pb.LOAD_PHASE_STARTING,
    LoadPhase.LOADING: pb.LOAD_PHASE_LOADING,
    LoadPhase.READY: pb.LOAD_PHASE_READY,
    LoadPhase.DOWNLOADING: pb.LOAD_PHASE_DOWNLOADING,
}
_STATE = {
    ModelState.EMPTY: pb.MODEL_STATE_EMPTY,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.STOPPING: pb.MODEL_STATE_STOPPING,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}
_STYLE = {
    ReasoningStyle.NONE: pb.REASONING_STYLE_UNSPECIFIED,
    ReasoningStyle.ENABLE_THINKING: pb.REASONING_STYLE_ENABLE_THINKING,
    ReasoningStyle.REASONING_EFFORT: pb.REASONING_STYLE_REASONING_EFFORT,
    ReasoningStyle.THINKING: pb.REASONING_STYLE_THINKING,
}


def enum_value(table: dict, value: int, field: str):
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument(f"unknown value {value}", field=field) from None


def load_request(request: pb.LoadModelRequest) -> tuple[str | HubSource | None, LoadOptions, str]:
    """The source (None: the configured model named), the options, the model id ("" = the file's)."""
    if request.model:
        try:
            check_model_id(request.model)
        except InvalidArgument as error:
            raise InvalidArgument(error.description, field="model") from None
    if request.WhichOneof("source") is None and request.model:
        if request.HasField("options"):
            raise InvalidArgument("a configured model loads with its configured options; give a source to"
                                  " choose others", field="options")
        return None, LoadOptions(), request.model
    return model_source(request), load_options(request.options), request.model


def model_source(request: pb.LoadModelRequest | pb.PlanModelRequest) -> str | HubSource:
    if request.WhichOneof("source") == "hub":
        h = request.hub
        return HubSource(repo=h.repo, variant=h.variant, revision=h.revision, token=h.token)
    if request.WhichOneof("source") == "path" and request.path:
        return request.path
    raise InvalidArgument("is required: the GGUF file to load, `hub` (a Hugging Face Hub repo), or the `model`"
                          " id of a configured model", field="path")


def load_options(o: pb.LoadOptions) -> LoadOptions:
    return LoadOptions(
        context_length=o.context_length,
        parallel=o.parallel or 1,
        cache_type=enum_value(_CACHE, o.cache_type, "options.cache_type"),
        threads=o.threads,
        chat_template=o.chat_template,
        speculative=enum_value(_SPECULATIVE, o.speculative, "options.speculative"),
        mmproj_path=o.mmproj_path,
        batch_size=o.batch_size,
        mode=enum_value(_MODE, o.mode, "options.mode"),
        pooling=enum_value(_POOLING, o.pooling, "options.pooling"),
        rpc_workers=tuple(o.rpc_workers),
    )


def plan_request(request: pb.PlanModelRequest) -> tuple[str | HubSource, LoadOptions, list[GpuInfo] | None]:
    path, options = model_source(request), load_options(request.options)
    gpus = [GpuInfo(g.index, g.free_bytes) for g in request.gpus] or None
    if gpus and len({g.index for g in gpus}) != len(gpus):
        raise InvalidArgument("each simulated GPU index may appear once", field="gpus")
    return path, options, gpus


def plan(load_plan: LoadPlan) -> pb.Plan:
    p, facts, kv = load_plan.plan, load_plan.facts, load_plan.kv
    return pb.Plan(
        architecture=facts.architecture,
        native_context_length=facts.native_context_length,
        context_length=p.context_length,
        gpus=list(p.gpus),
        offload_all=p.offload_all,
        fits=p.fits,
        weights_bytes=p.weights_bytes,
        kv=_kv(kv, p.kv_bytes),
        shares=[pb.GpuShare(**asdict(share)) for share in p.shares],
        ceiling_context_length=p.ceiling_context,
        reasons=list(p.reasons),
        simulated=load_plan.simulated,
        rpc_workers=[_worker(report, p.workers) for report in load_plan.workers],
    )


def _worker(report: WorkerReport, shares: tuple[WorkerShare, ...]) -> pb.RpcWorker:
    planned = {s.device: s for s in shares if s.address == report.address}
    devices = []
    for d in report.devices:
        share = planned.get(d.index)
        devices.append(pb.RpcDevice(index=d.index, free_bytes=d.free_bytes, total_bytes=d.total_bytes,
                                    memory_is_ram=d.memory_is_ram,
                                    budget_bytes=share.budget_bytes if share else 0,
                                    weights_bytes=share.weights_bytes if share else 0,
                                    kv_bytes=share.kv_bytes if share else 0))
    return pb.RpcWorker(address=report.address, state=_WORKER_STATE[report.state], protocol=report.protocol,
                        devices=devices, detail=report.detail)


_WORKER_STATE = {state: getattr(pb, f"RPC_WORKER_STATE_{state.name}") for state in WorkerState}


def _kv(kv: KvEstimate | None, total: int) -> pb.KvBreakdown:
    if kv is None:
        return pb.KvBreakdown(total_bytes=total, method="no estimate: the header lacks the model's shape")
    return pb.KvBreakdown(
        k_bytes=kv.k_bytes + kv.indexer_bytes,
        v_bytes=kv.v_bytes,
        swa_k_bytes=kv.swa_k_bytes,
        swa_v_bytes=kv.swa_v_bytes,
        recurrent_bytes=kv.recurrent_bytes,
        total_bytes=kv.total_bytes,
        method=kv.explanation,
    )


def load_event(event: LoadEvent) -> pb.LoadModelResponse:
    message = pb.LoadModelResponse(
        phase=_PHASE[event.phase],
        message=event.message,
        bytes_loaded=event.bytes_loaded,
        bytes_total=event.bytes_total,
    )
    if event.model is not None:
        message.model.CopyFrom(model_info(event.model))
    if event.plan is not None:
        message.plan.CopyFrom(plan(event.plan))
    if event.hub is not None:
        message.hub.CopyFrom(hub_files(event.hub))
    if event.download is not None:
        message.download.CopyFrom(download(event.download))
    return message


def hub_files(model: HubModel) -> pb.HubFiles:
    selection = model.selection
    return pb.HubFiles(
        repo=model.repo,
        commit=model.commit,
        variant=selection.variant,
        files=[pb.HubFile(path=f.path, size_bytes=f.size, projector=f is selection.mmproj) for f in selection.files],
        bytes_total=model.bytes_total,
        bytes_cached=model.bytes_cached,
        bytes_to_download=model.bytes_to_download,
        disk_free_bytes=model.disk_free,
        cache_dir=model.cache_dir,
        fits_disk=model.fits_disk,
        requested_variant=model.requested_variant,
    )


def download(progress: DownloadProgress) -> pb.DownloadProgress:
    return pb.DownloadProgress(**asdict(progress))


def model_info(info: ModelInfo) -> pb.ModelInfo:
    plain = {k: v for k, v in asdict(info).items()
             if k not in ("capabilities", "cache_type", "state", "mode", "audio_codec")}
    ready = info.state is ModelState.READY  # the codec is probed once the model runs
    return pb.ModelInfo(
        **plain,
        capabilities=_capabilities(info.capabilities),
        cache_type=_CACHE_TO_PB[info.cache_type],
        state=_STATE[info.state],
        mode=_MODE_TO_PB[info.mode],
        audio_codec=_CODEC_TO_PB[info.audio_codec] if ready else pb.AUDIO_CODEC_UNSPECIFIED,
        audio=describe_codec(info.audio_codec) if ready else "",
    )


_CODEC_TO_PB = {codec: getattr(pb, f"AUDIO_CODEC_{codec.name}") for codec in AudioCodec}


def model_entry(entry: ModelEntry) -> pb.ModelEntry:
    return pb.ModelEntry(
        info=model_info(entry.info),
        configured=entry.configured,
        pinned=entry.pinned,
        on_demand=entry.on_demand,
        idle_ttl_seconds=entry.idle_ttl_s,
        idle_seconds=entry.idle_for_s or 0.0,
        memory=[pb.DeviceMemory(device=d, bytes=n) for d, n in sorted(entry.held.items())],
        in_flight=entry.in_flight,
    )


def _capabilities(caps: Capabilities) -> pb.Capabilities:
    return pb.Capabilities(
        reasoning=caps.reasoning,
        reasoning_style=_STYLE[caps.reasoning_style],
        reasoning_always_on=caps.reasoning_always_on,
        preserve_thinking=caps.preserve_thinking,
        tools=caps.tools,
        vision=caps.vision,
    )


def embed_request(request: pb.EmbedRequest) -> EmbedRequest:
    return EmbedRequest(texts=tuple(request.texts), normalize=not request.raw)


def embeddings(found: Embeddings) -> pb.EmbedResponse:
    return pb.EmbedResponse(embeddings=[pb.Embedding(values=v) for v in found.vectors],
                            prompt_tokens=found.prompt_tokens)


def rerank_request(request: pb.RerankRequest) -> RerankRequest:
    return RerankRequest(query=request.query, documents=tuple(request.documents), top_n=request.top_n)


def ranking(found: Ranking) -> pb.RerankResponse:
    return pb.RerankResponse(results=[pb.RerankResult(index=r.index, score=r.score) for r in found.results],
                             prompt_tokens=found.prompt_tokens)
