"""The gRPC edge without llama-server: request ids, error details as a client
decodes them, and server reflection under both protocol versions.

A real ``grpc.aio`` server on a free port serves the real servicer; the model
slot behind it is a stand-in that streams fixed events or raises.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain import chat
from llamagate.domain.errors import InvalidArgument, LlamagateError, NotReady
from llamagate.domain.model_info import ModelInfo
from llamagate.server.errors import ERROR_DOMAIN
from llamagate.server.reflection import add_reflection
from llamagate.server.request_id import REQUEST_ID_KEY, request_id_for
from llamagate.server.service import LlamaGateService
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["LlamaGateService"].full_name
HEALTH = "grpc.health.v1.Health"

# --- request_id_for ------------------------------------------------------------------


def test_the_requests_own_id_wins_then_the_metadata_then_a_new_one():
    metadata = (("user-agent", "x"), (REQUEST_ID_KEY, "from-header"))
    assert request_id_for("mine-1", metadata) == "mine-1"
    assert request_id_for("", metadata) == "from-header"
    fresh = {request_id_for("", None), request_id_for("", ())}
    assert len(fresh) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in fresh)


def test_binary_metadata_is_not_an_id():
    assert re.fullmatch(r"[0-9a-f]{32}", request_id_for("", ((REQUEST_ID_KEY, b"raw"),)))


@pytest.mark.parametrize(("given_id", "metadata", "field"), [
    ("has space", (), "request_id"),
    ("x" * 129, (), "request_id"),
    ("tab\there", (), "request_id"),
    ("", ((REQUEST_ID_KEY, "ünïcode"),), "metadata x-request-id"),
])
def test_an_id_that_cannot_go_in_a_log_line_is_refused_by_where_it_came_from(given_id, metadata, field):
    with pytest.raises(InvalidArgument) as caught:
        request_id_for(given_id, metadata)
    assert caught.value.field == field


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128))
def test_any_visible_ascii_id_is_echoed_unchanged(given_id):
    assert request_id_for(given_id, ((REQUEST_ID_KEY, "other"),)) == given_id


# --- a served stand-in -----------------------------------------------------------------

DONE = chat.Done(chat.FinishReason.STOP, chat.Usage(5, 1, 6), chat.Timings(predicted_n=1))


class StandInSlot:
    """What the servicer calls on the model slot: fixed events, or an error."""

    def __init__(self, error: LlamagateError | None = None) -> None:
        self.error = error
        self.requests: list[chat.GenerateRequest] = []

    async def generate(self, request: chat.GenerateRequest) -> AsyncIterator[chat.GenerateEvent]:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        yield chat.ContentDelta("Hi")
        yield DONE

    async def count_tokens(self, request: chat.GenerateRequest) -> tuple[int, int]:
        if self.error is not None:
            raise self.error
        return 12, 2048

    async def slot_for(self, model: str) -> StandInSlot:
        """As the registry: every model is this one slot."""
        return self

    def status(self, model: str) -> ModelInfo:
        """As the registry: the one model's info (its id names it in the logs)."""
        return ModelInfo(id=model or "m")


T = TypeVar("T")


async def serving(slot: StandInSlot, talk: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
    server = grpc.aio.server()
    # the stand-in answers for the slot and for the agent (which hands plain requests to the slot)
    pb_grpc.add_LlamaGateServiceServicer_to_server(LlamaGateService(slot, lambda found: found), server)  # type: ignore[arg-type]
    add_reflection(server, (SERVICE, HEALTH))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await talk(channel)
    finally:
        await server.stop(None)


def run(talk: Callable[[grpc.aio.Channel], Awaitable[T]], slot: StandInSlot | None = None) -> T:
    return asyncio.run(serving(slot or StandInSlot(), talk))


HI = pb.GenerateRequest(messages=[pb.Message(role=pb.ROLE_USER, text="hi")])


async def generate(channel: grpc.aio.Channel, request: pb.GenerateRequest = HI, metadata=None):
    call = pb_grpc.LlamaGateServiceStub(channel).Generate(request, metadata=metadata)
    events = [e async for e in call]
    return dict(await call.initial_metadata()).get(REQUEST_ID_KEY), events


def test_the_request_id_is_echoed_in_the_initial_metadata_and_every_event():
    async def talk(channel):
        return [
            await generate(channel, metadata=((REQUEST_ID_KEY, "from-header"),)),
            await generate(channel, pb.GenerateRequest(messages=HI.messages, request_id="own-id"),
                           metadata=((REQUEST_ID_KEY, "from-header"),)),
            await generate(channel),
        ]

    (header, by_header), (own, by_own), (made, by_made) = run(talk)
    assert header == "from-header" and [e.request_id for e in by_header] == ["from-header"] * 2
    assert own == "own-id" and [e.request_id for e in by_own] == ["own-id"] * 2
    assert re.fullmatch(r"[0-9a-f]{32}", made) and [e.request_id for e in by_made] == [made] * 2
    assert [e.WhichOneof("event") for e in by_made] == ["content_delta", "done"]


async def status_of(call) -> tuple[grpc.StatusCode, dict[str, Any]]:
    """The ended call's code and its google.rpc details, decoded as
    grpcio-status does for a client (it also checks the Status agrees with the call)."""
    status = await rpc_status.aio.from_call(call)
    found: dict[str, Any] = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                found[kind.DESCRIPTOR.name] = kind()
                detail.Unpack(found[kind.DESCRIPTOR.name])
    return await call.code(), found


def test_a_bad_request_id_reaches_the_client_as_a_field_violation():
    async def talk(channel):
        call = pb_grpc.LlamaGateServiceStub(channel).Generate(
            pb.GenerateRequest(messages=HI.messages, request_id="no spaces please"))
        with pytest.raises(grpc.aio.AioRpcError):
            [_ async for _ in call]
        return await status_of(call)

    slot = StandInSlot()
    code, details = run(talk, slot)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and slot.requests == []
    [violation] = details["BadRequest"].field_violations
    assert violation.field == "request_id"
    assert (details["ErrorInfo"].reason, details["ErrorInfo"].domain) == ("INVALID_ARGUMENT", ERROR_DOMAIN)


def test_a_count_while_the_model_loads_is_unavailable_with_when_to_retry():
    async def talk(channel):
        call = pb_grpc.LlamaGateServiceStub(channel).CountTokens(pb.CountTokensRequest(messages=HI.messages))
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        return await status_of(call)

    code, details = run(talk, StandInSlot(NotReady("model m is loading; retry shortly", retry_after_s=0.5)))
    assert code is grpc.StatusCode.UNAVAILABLE and details.keys() == {"ErrorInfo", "RetryInfo"}
    assert details["ErrorInfo"].reason == "MODEL_NOT_READY"
    assert details["RetryInfo"].retry_delay.ToMilliseconds() == 500


def test_count_tokens_answers_the_count_and_what_a_slot_holds():
    async def talk(channel):
        return await pb_grpc.LlamaGateServiceStub(channel).CountTokens(pb.CountTokensRequest(messages=HI.messages))

    answer = run(talk)
    assert (answer.prompt_tokens, answer.context_length) == (12, 2048)


# --- reflection ---------------------------------------------------------------------------

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


async def ask_v1(channel: grpc.aio.Channel, *requests: reflection_pb2.ServerReflectionRequest):
    """A v1 client: the same messages as v1alpha, under v1's method name."""
    info = channel.stream_stream(V1_METHOD, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return [r async for r in info(iter(requests))]


def test_reflection_v1_lists_the_services_and_finds_the_file_of_a_symbol():
    async def talk(channel):
        return await ask_v1(channel, reflection_pb2.ServerReflectionRequest(list_services=""),
                            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
                            reflection_pb2.ServerReflectionRequest(
                                file_containing_symbol="grpc.reflection.v1.ServerReflection"),
                            reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{SERVICE}.Generate"))

    listed, found, itself, method = run(talk)
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, HEALTH, "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in found.file_descriptor_response.file_descriptor_proto]
    assert "llamagate/v1/llamagate.proto" in [f.name for f in files]
    [service] = [s for f in files if f.package == "llamagate.v1" for s in f.service]
    assert {m.name for m in service.method} >= {"Generate", "CountTokens", "LoadModel"}
    # A client describing the reflection service itself finds v1 under v1's own package.
    [v1_file] = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in itself.file_descriptor_response.file_descriptor_proto]
    assert (v1_file.package, v1_file.service[0].method[0].input_type) == (
        "grpc.reflection.v1", ".grpc.reflection.v1.ServerReflectionRequest")
    # A method by its full name (grpcurl's `describe Service.Method`): its service's file.
    assert method.file_descriptor_response.file_descriptor_proto == found.file_descriptor_response.file_descriptor_proto


def test_reflection_v1alpha_serves_a_full_descriptor_database():
    def describe(port: int):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            the_file = database.FindFileContainingSymbol(SERVICE)
            pool = descriptor_pool.DescriptorPool(database)
            method = pool.FindMethodByName(f"{SERVICE}.Generate")
            return services, the_file.name, method.output_type.full_name, method.server_streaming

    async def main():
        server = grpc.aio.server()
        servicer = LlamaGateService(StandInSlot(), lambda found: found)  # type: ignore[arg-type]
        pb_grpc.add_LlamaGateServiceServicer_to_server(servicer, server)
        add_reflection(server, (SERVICE, HEALTH))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return await asyncio.to_thread(describe, port)  # the sync client must not block the server's loop
        finally:
            await server.stop(None)

    services, file_name, output, streaming = asyncio.run(main())
    assert {SERVICE, "grpc.reflection.v1.ServerReflection"} <= services
    assert file_name == "llamagate/v1/llamagate.proto"
    assert (output, streaming) == ("llamagate.v1.GenerateResponse", True)


def test_a_second_server_in_the_same_process_registers_v1_again_without_failing():
    async def talk(channel):
        return await ask_v1(channel, reflection_pb2.ServerReflectionRequest(list_services=""))

    for _ in range(2):
        [listed] = run(talk)
        assert SERVICE in {s.name for s in listed.list_services_response.service}
