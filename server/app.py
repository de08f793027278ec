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
from llamagate.adapters.default_model import ensure_default_model
from llamagate.adapters.disk_space import DiskSpace as LocalDiskSpace
from llamagate.adapters.engine_discovery import find_llama_server
from llamagate.adapters.gguf_inspector import GgufInspector
from llamagate.adapters.hub_client import HfHub
from llamagate.adapters.jinja_template import JinjaTemplateRenderer
from llamagate.adapters.llama_process import LlamaServerLauncher
from llamagate.adapters.markup_parser import RustMarkupParser
from llamagate.adapters.memory_probe import SystemMemory
from llamagate.adapters.tools import build_tools
from llamagate.application.agent import Agent
from llamagate.application.hub_models import HubModels
from llamagate.application.slot import ModelSlot
from llamagate.domain.model_info import ModelInfo
from llamagate.domain.model_state import ModelState
from llamagate.domain.ports import DiskSpace, MemoryProbe, ToolBox
from llamagate.server.message_limit import MessageLimit, core_limit
from llamagate.server.reflection import add_reflection
from llamagate.server.service import LlamaGateService
from llamagate.server.settings import Settings, ToolSettings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LlamaGateService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def build_slot(settings: Settings, memory: MemoryProbe | None = None, disk: DiskSpace | None = None) -> ModelSlot:
    """The slot with the real adapters (``memory`` and ``disk`` replace the
    system's probes: a what-if). The Hub is huggingface_hub's, as its
    environment (HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN) says."""
    def find_binary() -> Path:
        return find_llama_server(settings.env, settings.cache_dir, settings.llama_cpp_dir or None)

    launcher = LlamaServerLauncher(find_binary, registry_dir=paths.children_dir(settings.cache_dir), env=settings.env)
    inspector = GgufInspector()
    hub = HubModels(HfHub(), disk or LocalDiskSpace(), inspector)
    return ModelSlot(inspector, launcher, memory or SystemMemory(settings.env), settings.slot,
                     renderer=JinjaTemplateRenderer(), hub=hub)


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


class ListenError(Exception):
    """The address to serve on is taken or invalid."""


@dataclass
class App:
    server: grpc.aio.Server
    port: int
    slot: ModelSlot
    health: health.aio.HealthServicer

    async def follow(self, info: ModelInfo) -> None:
        """The model's readiness is this service name's health (for balancers)."""
        await self.health.set(SERVICE_NAME, _SERVING if info.state is ModelState.READY else _NOT_SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING first, so balancers drain us; then the server; then the child."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.slot.close()


async def create_server(settings: Settings, slot: ModelSlot | None = None, toolbox: ToolBox | None = None) -> App:
    """Start serving on ``settings.address`` (port 0 picks a free one); returns the App."""
    slot = slot or build_slot(settings)
    tools = toolbox if toolbox is not None else await asyncio.to_thread(build_toolbox, settings.tools)
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        interceptors=[MessageLimit(limit)],
        options=[("grpc.max_receive_message_length", core_limit(limit))],
    )
    health_servicer = health.aio.HealthServicer()
    agent = Agent(slot, tools, RustMarkupParser)
    pb_grpc.add_LlamaGateServiceServicer_to_server(LlamaGateService(slot, agent), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection(server, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    try:
        port = server.add_insecure_port(settings.address)
    except RuntimeError as error:  # grpc's way of saying the bind failed
        raise ListenError(f"cannot listen on {settings.address}: is another service using it?") from error
    await server.start()
    app = App(server, port, slot, health_servicer)
    await health_servicer.set("", _SERVING)
    await app.follow(slot.status())
    slot.on_change(app.follow)
    return app
