"""Composition root: real adapters, the model slot, the gRPC server, health and reflection."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from llamagate.adapters import paths
from llamagate.adapters.child_process import kill_stale_children
from llamagate.adapters.codec_decoders import OnnxDecoderLoader
from llamagate.adapters.default_model import ensure_default_model
from llamagate.adapters.disk_space import DiskSpace as LocalDiskSpace
from llamagate.adapters.engine_discovery import find_llama_server
from llamagate.adapters.gguf_inspector import GgufInspector
from llamagate.adapters.hub_client import HfHub
from llamagate.adapters.jinja_template import JinjaTemplateRenderer
from llamagate.adapters.llama_process import LlamaServerLauncher
from llamagate.adapters.markup_parser import RustMarkupParser
from llamagate.adapters.memory_probe import SystemMemory
from llamagate.adapters.model_files import model_roots
from llamagate.adapters.rpc_probe import RpcProbe
from llamagate.adapters.tools import build_tools
from llamagate.application.agent import Agent
from llamagate.application.hub_models import HubModels
from llamagate.application.registry import ModelRegistry, model_of
from llamagate.application.rpc_workers import RpcWorkers
from llamagate.application.slot import ModelSlot
from llamagate.domain.model_config import ServiceConfig
from llamagate.domain.model_info import ModelInfo
from llamagate.domain.model_state import ModelState
from llamagate.domain.ports import DiskSpace, MemoryProbe, ToolBox
from llamagate.server.auth import BearerAuth
from llamagate.server.health_watch import DrainingHealth
from llamagate.server.listen import OPTIONS as LISTEN_OPTIONS
from llamagate.server.listen import listen
from llamagate.server.message_limit import MessageLimit, core_limit
from llamagate.server.metrics import Metrics, metrics_of
from llamagate.server.reflection import add_reflection
from llamagate.server.replica import ReplicaIdentity
from llamagate.server.service import LlamaGateService
from llamagate.server.settings import Settings, ToolSettings
from llamagate.server.stream_limits import StreamLimits
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LlamaGateService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def build_registry(settings: Settings, memory: MemoryProbe | None = None, disk: DiskSpace | None = None,
                   config: ServiceConfig | None = None) -> ModelRegistry:
    """The model registry with the real adapters (``memory`` and ``disk``
    replace the system's probes: a what-if). The Hub is huggingface_hub's, as
    its environment (HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN) says."""
    def find_binary() -> Path:
        return find_llama_server(settings.env, settings.cache_dir, settings.llama_cpp_dir or None)

    launcher = LlamaServerLauncher(find_binary, registry_dir=paths.children_dir(settings.cache_dir), env=settings.env)
    inspector = GgufInspector(model_roots(settings.model_roots, settings.cache_dir))  # files only from these
    metrics = Metrics() if settings.observability.metrics else None
    telemetry = metrics.telemetry if metrics else None
    hub = HubModels(HfHub(), disk or LocalDiskSpace(), inspector, telemetry)
    renderer = JinjaTemplateRenderer()
    decoders = OnnxDecoderLoader()
    workers = RpcWorkers(RpcProbe(), settings.rpc_workers.allowed)  # shared: a worker serves one model at a time

    def make_slot(view: MemoryProbe) -> ModelSlot:
        return ModelSlot(inspector, launcher, view, settings.slot, renderer=renderer, hub=hub, telemetry=telemetry,
                         name=model_of(view), decoders=decoders, workers=workers)

    models = ModelRegistry(make_slot, memory or SystemMemory(settings.env), config,
                           host_budget=settings.host_memory_bytes, host_cache_bytes=settings.slot.host_cache_mib << 20)
    if metrics:
        metrics.follow(models)
    return models


def build_toolbox(tools: ToolSettings) -> ToolBox:
    """The server-side tools enabled (blocking: probes the sandbox); says at start how code is contained."""
    toolbox = build_tools(tools.enabled, searxng_url=tools.searxng_url, allow_private_fetch=tools.allow_private_fetch)
    log.info("server tools: %s", ", ".join(sorted(toolbox.names)) or "none")
    if toolbox.sandbox_mode is not None:
        log.info("python and terminal run sandboxed: %s", toolbox.sandbox_mode)
    return toolbox


async def clean_stale_children(settings: Settings) -> list[int]:
    """Kill the children of a llamagate that died without stopping them (off the event loop)."""
    return await asyncio.to_thread(kill_stale_children, paths.children_dir(settings.cache_dir))


async def default_model(settings: Settings) -> Path:
    """The embedded default model, fetched once (off the event loop: it may download)."""
    return await asyncio.to_thread(ensure_default_model, settings.cache_dir)


@dataclass
class App:
    server: grpc.aio.Server
    port: int
    registry: ModelRegistry
    health: health.aio.HealthServicer
    metrics: Metrics | None = None  # with metrics_port, where they are served
    metrics_port: int = 0

    async def follow(self, model: str, info: ModelInfo) -> None:
        """Each model's readiness is its own health service name; the service's
        name is SERVING while any model is ready (for balancers)."""
        await self.health.set(model_health_name(model), _SERVING if info.state is ModelState.READY else _NOT_SERVING)
        ready = any(self.registry.status(m).state is ModelState.READY for m in self.registry.loaded())
        await self.health.set(SERVICE_NAME, _SERVING if ready else _NOT_SERVING)

    async def stop(self, grace: float = 5.0, cut: asyncio.Event | None = None) -> None:
        """NOT_SERVING first (every name), so balancers drain us; then new RPCs
        are refused (UNAVAILABLE: the listener is closed) while those in flight
        get ``grace`` seconds, or until ``cut`` is set; gRPC then cancels the
        rest, which their clients see as UNAVAILABLE ("Cancelling all calls"),
        a code they retry; then the children."""
        await self.health.enter_graceful_shutdown()
        draining = asyncio.ensure_future(self.server.stop(grace))
        try:
            if cut is not None:
                cutting = asyncio.ensure_future(cut.wait())
                await asyncio.wait({draining, cutting}, return_when=asyncio.FIRST_COMPLETED)
                cutting.cancel()
                if not draining.done():
                    await self.server.stop(None)  # cancels every call now; the stop under way then ends
            await draining
        finally:
            await self.registry.close()
            if self.metrics:
                self.metrics.close()


def model_health_name(model: str) -> str:
    """The health service name of one model: ``llamagate.v1.LlamaGateService/ID``."""
    return f"{SERVICE_NAME}/{model}"


async def create_server(settings: Settings, registry: ModelRegistry | None = None,
                        toolbox: ToolBox | None = None) -> App:
    """Start serving on ``settings.address`` (port 0 picks a free one); returns the App."""
    registry = registry or build_registry(settings)
    tools = toolbox if toolbox is not None else await asyncio.to_thread(build_toolbox, settings.tools)
    metrics = metrics_of(registry) or (Metrics() if settings.observability.metrics else None)
    server = grpc.aio.server(interceptors=interceptors(settings, metrics), options=server_options(settings))
    health_servicer = DrainingHealth()  # its Watch streams end at shutdown: they never hold the drain

    def agent_for(slot: ModelSlot) -> Agent:
        return Agent(slot, tools, RustMarkupParser)

    pb_grpc.add_LlamaGateServiceServicer_to_server(LlamaGateService(registry, agent_for, settings.limits.prompt_bytes), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection(server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    port = bind(server, settings)
    await server.start()
    app = App(server, port, registry, health_servicer, metrics)
    if metrics and settings.observability.metrics:
        try:
            app.metrics_port = metrics.serve(settings.observability.metrics, registry)
        except BaseException:
            await server.stop(None)
            raise
    await health_servicer.set("", _SERVING)
    await health_servicer.set(SERVICE_NAME, _NOT_SERVING)
    for model in registry.ids():
        await app.follow(model, registry.status(model))
    registry.on_change(app.follow)
    registry.start_reaper()
    return app


def interceptors(settings: Settings, metrics: Metrics | None = None) -> list[grpc.aio.ServerInterceptor]:
    """Every RPC passes these, in order: metrics first, to count every outcome; the replica's id next,
    so every answer names it, refusals too; then auth, so a refused caller's request is never read."""
    counted = [metrics.interceptor] if metrics else []
    return [*counted, ReplicaIdentity(settings.replica.identity(settings.address)), BearerAuth(settings.auth),
            StreamLimits(settings.limits), MessageLimit(settings.max_message_bytes)]


def server_options(settings: Settings) -> list[tuple[str, int | str]]:
    """gRPC core's channel arguments for the server."""
    return [("grpc.max_receive_message_length", core_limit(settings.max_message_bytes)), *LISTEN_OPTIONS,
            *settings.limits.server_options()]


def bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Listen on ``settings.address``, with TLS when configured; the port bound
    (0 picks a free one). ListenError when it is taken or invalid (server/listen.py)."""
    return listen(server, settings)
