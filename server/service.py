"""The LlamaGate gRPC servicer: translate, delegate to the model slot, translate back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from llamagate.application.agent import Agent
from llamagate.application.slot import ModelSlot
from llamagate.domain.chat import Done
from llamagate.domain.errors import LlamagateError
from llamagate.server import convert, convert_chat
from llamagate.server.errors import status_for, trailing_details
from llamagate.server.request_id import REQUEST_ID_KEY, request_id_for
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


async def _abort(context: grpc.aio.ServicerContext, error: LlamagateError, request_id: str = "") -> None:
    code = status_for(error)
    log.info("%s%s: %s", f"generate {request_id}: " if request_id else "", code.name, error)
    await context.abort(code, str(error), trailing_details(error))


class LlamaGateService(pb_grpc.LlamaGateServiceServicer):
    def __init__(self, slot: ModelSlot, agent: Agent) -> None:
        self._slot = slot
        self._agent = agent  # Generate: the slot, through the agent loop when the request names server tools

    async def LoadModel(self, request: pb.LoadModelRequest, context) -> AsyncIterator[pb.LoadModelResponse]:
        try:
            source, options = convert.load_request(request)
            async with contextlib.aclosing(self._slot.load(source, options)) as events:
                async for event in events:
                    yield convert.load_event(event)
        except LlamagateError as error:
            await _abort(context, error)

    async def UnloadModel(self, request: pb.UnloadModelRequest, context) -> pb.UnloadModelResponse:
        result = await self._slot.unload()
        return pb.UnloadModelResponse(was_loaded=result.was_loaded, pid=result.pid)

    async def GetStatus(self, request: pb.GetStatusRequest, context) -> pb.GetStatusResponse:
        return pb.GetStatusResponse(model=convert.model_info(self._slot.status()))

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateResponse]:
        request_id = ""
        try:
            request_id = request_id_for(request.request_id, context.invocation_metadata())
            await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
            domain_request = convert_chat.generate_request(request)
            log.info("generate %s: %d messages, %d tools", request_id, len(request.messages), len(request.tools))
            async with contextlib.aclosing(self._agent.generate(domain_request)) as events:
                async for event in events:
                    if isinstance(event, Done):
                        log.info("generate %s: %s, %d tokens", request_id, event.finish_reason.value,
                                 event.usage.completion_tokens)
                    yield convert_chat.generate_event(event, request_id)
        except LlamagateError as error:
            await _abort(context, error, request_id)
        except asyncio.CancelledError:  # the caller cancelled, or its deadline passed: the work upstream stops
            log.info("generate %s: ended by the caller (cancel or deadline)", request_id)
            raise

    async def CountTokens(self, request: pb.CountTokensRequest, context) -> pb.CountTokensResponse:
        try:
            tokens, slot_context = await self._slot.count_tokens(convert_chat.count_request(request))
            return pb.CountTokensResponse(prompt_tokens=tokens, context_length=slot_context)
        except LlamagateError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises

    async def PlanModel(self, request: pb.PlanModelRequest, context) -> pb.PlanModelResponse:
        try:
            source, options, gpus = convert.plan_request(request)
            load_plan, hub = await self._slot.plan(source, options, gpus)
            return pb.PlanModelResponse(plan=convert.plan(load_plan), hub=convert.hub_files(hub) if hub else None)
        except LlamagateError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises
