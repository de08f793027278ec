"""Composition root: real adapters, the gRPC server, health and reflection."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llamagate.adapters import paths
from llamagate.adapters.engine_discovery import find_llama_server
from llamagate.adapters.gguf_inspector import GgufInspector
from llamagate.adapters.llama_http import LlamaHttpClient
from llamagate.adapters.llama_process import LlamaServerLauncher
from llamagate.adapters.memory_probe import SystemMemory
from llamagate.adapters.orphans import kill_orphans
from llamagate.domain.errors import EngineNotFound
from llamagate.domain.manager import ModelManager
from llamagate.domain.model import LoadEvent, LoadPhase, ModelInfo, ModelState
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc
from llamagate.server.config import DEFAULT_ADDRESS
from llamagate.server.service import LlamaGateService

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LlamaGate"].full_name


def build_manager(llama_cpp_dir: str | None = None, **launcher_options) -> ModelManager:
    launcher = LlamaServerLauncher(lambda: find_llama_server(llama_cpp_dir=llama_cpp_dir), **launcher_options)
    return ModelManager(GgufInspector(), launcher, LlamaHttpClient(), SystemMemory())


def clean_orphans(llama_cpp_dir: str | None = None) -> list[int]:
    dirs = [paths.engine_root()] + ([Path(llama_cpp_dir)] if llama_cpp_dir else [])
    try:
        binaries = [find_llama_server(llama_cpp_dir=llama_cpp_dir)]
    except EngineNotFound:  # no engine yet: nothing of ours can be running
        binaries = []
    return kill_orphans(dirs, binaries)


class ListenError(Exception):
    """The address to serve on is taken or invalid."""


@dataclass
class App:
    server: grpc.aio.Server
    port: int
    manager: ModelManager
    health: health.aio.HealthServicer

    async def set_ready(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(SERVICE_NAME, status)

    async def follow_load(self, first: LoadEvent, events: AsyncIterator[LoadEvent]) -> ModelInfo:
        """Drive a load started outside any RPC (``serve``), logging its phases."""
        event = first
        async with contextlib.aclosing(events):
            while True:
                log.info("load %s: %s", event.phase.value, event.message)
                if event.phase is LoadPhase.READY and event.model is not None:
                    return event.model
                event = await anext(events)

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING first, so balancers drain us; then the server; then the child."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.manager.unload()


async def create_server(address: str = DEFAULT_ADDRESS, manager: ModelManager | None = None) -> App:
    """Start serving on ``address`` (port 0 picks a free one); returns the App."""
    manager = manager or build_manager()
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    pb_grpc.add_LlamaGateServicer_to_server(LlamaGateService(manager), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:  # grpc's way of saying the bind failed
        raise ListenError(f"cannot listen on {address}: is another service using it?") from error
    await server.start()
    app = App(server, port, manager, health_servicer)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await app.set_ready(manager.status().state is ModelState.READY)
    manager.on_readiness(app.set_ready)
    return app
