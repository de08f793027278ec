"""The LlamaGate gRPC servicer: translate, delegate to the model slot, translate back."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from llamagate.application.slot import ModelSlot
from llamagate.domain.errors import LlamagateError
from llamagate.server import convert
from llamagate.server.errors import status_for, trailing_details
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


async def _abort(context: grpc.aio.ServicerContext, error: LlamagateError) -> None:
    code = status_for(error)
    log.info("%s: %s", code.name, error)
    await context.abort(code, str(error), trailing_details(error))


class LlamaGateService(pb_grpc.LlamaGateServicer):
    def __init__(self, slot: ModelSlot) -> None:
        self._slot = slot

    async def LoadModel(self, request: pb.LoadModelRequest, context) -> AsyncIterator[pb.LoadEvent]:
        try:
            path, options = convert.load_request(request)
            async with contextlib.aclosing(self._slot.load(path, options)) as events:
                async for event in events:
                    yield convert.load_event(event)
        except LlamagateError as error:
            await _abort(context, error)

    async def UnloadModel(self, request: pb.UnloadModelRequest, context) -> pb.UnloadModelResponse:
        result = await self._slot.unload()
        return pb.UnloadModelResponse(was_loaded=result.was_loaded, pid=result.pid)

    async def GetStatus(self, request: pb.GetStatusRequest, context) -> pb.ModelInfo:
        return convert.model_info(self._slot.status())

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateEvent]:
        try:
            domain_request = convert.generate_request(request)
            async with contextlib.aclosing(self._slot.generate(domain_request)) as events:
                async for event in events:
                    yield convert.generate_event(event)
        except LlamagateError as error:
            await _abort(context, error)

    async def PlanModel(self, request: pb.PlanModelRequest, context) -> pb.Plan:
        try:
            path, options, gpus = convert.plan_request(request)
            return convert.plan(await self._slot.plan(path, options, gpus))
        except LlamagateError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises
