"""The LlamaGate gRPC servicer: translate, delegate to ModelManager, translate back."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from llamagate.domain.errors import LlamagateError
from llamagate.domain.manager import ModelManager
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc
from llamagate.server import convert
from llamagate.server.errors import status_for

log = logging.getLogger(__name__)

async def _abort(context: grpc.aio.ServicerContext, error: LlamagateError) -> None:
    code = status_for(error)
    log.info("%s: %s", code.name, error)
    await context.abort(code, str(error))


class LlamaGateService(pb_grpc.LlamaGateServicer):
    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    async def LoadModel(self, request: pb.LoadModelRequest, context) -> AsyncIterator[pb.LoadEvent]:
        try:
            path, options = convert.load_request(request)
            async with contextlib.aclosing(self._manager.load(path, options)) as events:
                async for event in events:
                    yield convert.load_event(event)
        except LlamagateError as error:
            await _abort(context, error)

    async def UnloadModel(self, request: pb.UnloadModelRequest, context) -> pb.UnloadModelResponse:
        was_loaded, pid = await self._manager.unload()
        return pb.UnloadModelResponse(was_loaded=was_loaded, pid=pid)

    async def GetStatus(self, request: pb.GetStatusRequest, context) -> pb.ModelInfo:
        return convert.model_info(self._manager.status())

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateEvent]:
        try:
            domain_request = convert.generate_request(request)
            async with contextlib.aclosing(self._manager.generate(domain_request)) as events:
                async for event in events:
                    yield convert.generate_event(event)
        except LlamagateError as error:
            await _abort(context, error)

    async def PlanModel(self, request: pb.PlanModelRequest, context) -> pb.Plan:
        try:
            path, options, gpus = convert.plan_request(request)
            return convert.plan(await self._manager.plan(path, options, gpus))
        except LlamagateError as error:
            await _abort(context, error)
