"""The LlamaGate gRPC servicer: translate, delegate to the model slot, translate back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from llamagate.application.agent import Agent
from llamagate.application.registry import ModelRegistry
from llamagate.application.slot import ModelSlot
from llamagate.domain.chat import Done
from llamagate.domain.errors import LlamagateError
from llamagate.domain.request_checks import check_prompt_size
from llamagate.domain.speech import AudioChunk
from llamagate.server import convert, convert_chat, convert_speech
from llamagate.server.errors import status_for, trailing_details
from llamagate.server.logs import request_context, set_model
from llamagate.server.request_id import REQUEST_ID_KEY, request_id_for
from llamagate.server.stream_limits import PROMPT_SETTING
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


async def _abort(context: grpc.aio.ServicerContext, error: LlamagateError, request_id: str = "") -> None:
    code = status_for(error)
    log.info("%s%s: %s", f"generate {request_id}: " if request_id else "", code.name, error)
    await context.abort(code, str(error), trailing_details(error))


class LlamaGateService(pb_grpc.LlamaGateServiceServicer):
    def __init__(self, registry: ModelRegistry, agent_for: Callable[[ModelSlot], Agent],
                 max_prompt_bytes: int = 0) -> None:
        self._registry = registry
        self._agent_for = agent_for  # Generate: the slot, through the agent loop when the request names server tools
        self._max_prompt_bytes = max_prompt_bytes  # a conversation's text; 0: no bound but the message size

    async def LoadModel(self, request: pb.LoadModelRequest, context) -> AsyncIterator[pb.LoadModelResponse]:
        try:
            source, options, name = convert.load_request(request)
            async with contextlib.aclosing(self._registry.load(name, source, options)) as events:
                async for event in events:
                    yield convert.load_event(event)
        except LlamagateError as error:
            await _abort(context, error)

    async def UnloadModel(self, request: pb.UnloadModelRequest, context) -> pb.UnloadModelResponse:
        try:
            _, pid, was_loaded = await self._registry.unload(request.model)
            return pb.UnloadModelResponse(was_loaded=was_loaded, pid=pid)
        except LlamagateError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises

    async def GetStatus(self, request: pb.GetStatusRequest, context) -> pb.GetStatusResponse:
        try:
            return pb.GetStatusResponse(model=convert.model_info(self._registry.status(request.model)))
        except LlamagateError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[convert.model_entry(e) for e in self._registry.entries()])

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateResponse]:
        request_id = ""
        with contextlib.ExitStack() as logging_context:  # every line logged meanwhile carries the request's id
            try:
                request_id = request_id_for(request.request_id, context.invocation_metadata())
                logging_context.enter_context(request_context(request_id))
                await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
                domain_request = convert_chat.generate_request(request)
                check_prompt_size(domain_request.messages, self._max_prompt_bytes, PROMPT_SETTING)
                log.info("generate %s: %d messages, %d tools", request_id, len(request.messages), len(request.tools))
                slot = await self._registry.slot_for(request.model)
                set_model(self._registry.status(request.model).id)
                async with contextlib.aclosing(self._agent_for(slot).generate(domain_request)) as events:
                    async for event in events:
                        if isinstance(event, Done):
                            log.info("generate %s: %s, %d tokens", request_id, event.finish_reason.value,
                                     event.usage.completion_tokens)
                        yield convert_chat.generate_event(event, request_id)
            except LlamagateError as error:
                await _abort(context, error, request_id)
            # The caller cancelled, or its deadline passed (grpc cancels the handler, or closes it at a
            # yield): the work upstream stops.
            except (asyncio.CancelledError, GeneratorExit):
                log.info("generate %s: ended by the caller (cancel or deadline)", request_id)
                raise

    async def Synthesize(self, request: pb.SynthesizeRequest, context) -> AsyncIterator[pb.SynthesizeResponse]:
        request_id = ""
        with contextlib.ExitStack() as logging_context:
            try:
                request_id = request_id_for(request.request_id, context.invocation_metadata())
                logging_context.enter_context(request_context(request_id))
                await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
                speech = convert_speech.speech_request(request)
                encoder = convert_speech.AudioEncoder(request.encoding)
                slot = await self._registry.slot_for(request.model)
                set_model(self._registry.status(request.model).id)
                log.info("synthesize %s: %d characters", request_id, len(speech.text))
                async with contextlib.aclosing(slot.synthesize(speech)) as events:
                    async for event in events:
                        if isinstance(event, AudioChunk):
                            yield pb.SynthesizeResponse(audio=encoder.chunk(event), request_id=request_id)
                        else:
                            log.info("synthesize %s: %.2f s of audio, %d tokens", request_id, event.audio_s,
                                     event.generated_tokens)
                            yield pb.SynthesizeResponse(done=encoder.done(event), request_id=request_id)
            except LlamagateError as error:
                await _abort(context, error, request_id)
            except (asyncio.CancelledError, GeneratorExit):  # as for Generate
                log.info("synthesize %s: ended by the caller (cancel or deadline)", request_id)
                raise

    async def CountTokens(self, request: pb.CountTokensRequest, context) -> pb.CountTokensResponse:
        try:
            counted = convert_chat.count_request(request)
            check_prompt_size(counted.messages, self._max_prompt_bytes, PROMPT_SETTING)
            slot = await self._registry.slot_for(request.model)
            tokens, slot_context = await slot.count_tokens(counted)
            return pb.CountTokensResponse(prompt_tokens=tokens, context_length=slot_context)
        except LlamagateError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises

    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        try:
            slot = await self._registry.slot_for(request.model)
            return convert.embeddings(await slot.embed(convert.embed_request(request)))
        except LlamagateError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises

    async def Rerank(self, request: pb.RerankRequest, context) -> pb.RerankResponse:
        try:
            slot = await self._registry.slot_for(request.model)
            return convert.ranking(await slot.rerank(convert.rerank_request(request)))
        except LlamagateError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises

    async def PlanModel(self, request: pb.PlanModelRequest, context) -> pb.PlanModelResponse:
        try:
            source, options, gpus = convert.plan_request(request)
            load_plan, hub = await self._registry.plan(source, options, gpus, request.model)
            return pb.PlanModelResponse(plan=convert.plan(load_plan), hub=convert.hub_files(hub) if hub else None)
        except LlamagateError as error:
            await _abort(context, error)
            raise  # unreachable: abort raises
