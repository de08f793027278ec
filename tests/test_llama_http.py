"""llama-server's HTTP API (SPEC §12, §13): the body we send, the stream we
decode, the errors it reports (defects 4–7), and /props.

llama-server is played by ``httpx.MockTransport`` with the bytes it really
sends (captured from the pinned build, or built as tools/server/*.cpp
builds them); timeouts and refused connections use real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.adapters.llama_http import (
    DONE,
    LlamaHttpClient,
    capabilities_from_props,
    parse_sse_line,
)
from llamagate.domain.batching import PromptStep
from llamagate.domain.capabilities import ServerCapabilities
from llamagate.domain.chat import (
    CallMessage,
    ChatCall,
    ChatChunk,
    FinishReason,
    Image,
    ResolvedSampling,
    Role,
    TextPart,
    Timings,
    Tool,
    Usage,
)
from llamagate.domain.errors import (
    ContextExceeded,
    EngineFailed,
    EngineRejected,
    EngineTimedOut,
)

SAMPLING = ResolvedSampling(
    temperature=0.6, top_p=0.95, top_k=20, min_p=0.01, repetition_penalty=1.0, presence_penalty=0.0
)
CALL = ChatCall(messages=(CallMessage(Role.USER, (TextPart("Say hi"),)),), sampling=SAMPLING, max_tokens=64)

# What the pinned llama-server streamed for "Say hi" (max_tokens 3), byte for byte.
REAL_STREAM = (
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
    b'"created":1795667162,"id":"chatcmpl-ni95","model":"SmolLM2-135M-Instruct.Q4_1.gguf",'
    b'"system_fingerprint":"b0-unknown","object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"I"}}],"created":1795667162,'
    b'"id":"chatcmpl-ni95","model":"SmolLM2-135M-Instruct.Q4_1.gguf","system_fingerprint":"b0-unknown",'
    b'"object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"\'m"}}],"created":1795667162,'
    b'"id":"chatcmpl-ni95","model":"SmolLM2-135M-Instruct.Q4_1.gguf","system_fingerprint":"b0-unknown",'
    b'"object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" glad"}}],"created":1795667162,'
    b'"id":"chatcmpl-ni95","model":"SmolLM2-135M-Instruct.Q4_1.gguf","system_fingerprint":"b0-unknown",'
    b'"object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1795667162,'
    b'"id":"chatcmpl-ni95","model":"SmolLM2-135M-Instruct.Q4_1.gguf","system_fingerprint":"b0-unknown",'
    b'"object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[],"created":1795667162,"id":"chatcmpl-ni95","model":"SmolLM2-135M-Instruct.Q4_1.gguf",'
    b'"system_fingerprint":"b0-unknown","object":"chat.completion.chunk","usage":{"completion_tokens":3,'
    b'"prompt_tokens":32,"total_tokens":35,"prompt_tokens_details":{"cached_tokens":31}},"timings":{"cache_n":31,'
    b'"prompt_n":1,"prompt_ms":7.067,"prompt_per_token_ms":7.067,"prompt_per_second":141.5027593038064,'
    b'"predicted_n":3,"predicted_ms":13.993,"predicted_per_token_ms":6.9965,"predicted_per_second":142.9286071607232}}'
    b"\n\n"
    b"data: [DONE]\n\n"
)
# The same stream cut after the content deltas.
FIRST_DELTAS = REAL_STREAM.split(b'data: {"choices":[{"finish_reason":"length"')[0]

# The HTTP answer to a prompt larger than a slot, as the pinned build sends it.
CONTEXT_EXCEEDED_BODY = (
    b'{"error":{"code":400,"message":"request (431 tokens) exceeds the available context size (256 tokens), '
    b'try increasing it","type":"exceed_context_size_error","n_prompt_tokens":431,"n_ctx":256}}'
)


def sse(*payloads: object) -> bytes:
    return b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads)


def client_for(handler: Callable[[httpx.Request], httpx.Response], **kwargs) -> LlamaHttpClient:
    return LlamaHttpClient("http://127.0.0.1:1", "secret-key", transport=httpx.MockTransport(handler), **kwargs)


def streaming(body: bytes, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    content_type = "text/event-stream" if status == 200 else "application/json; charset=utf-8"
    return lambda request: httpx.Response(status, content=body, headers={"content-type": content_type})


async def _collect(client: LlamaHttpClient, call: ChatCall) -> list[ChatChunk]:
    try:
        return [chunk async for chunk in client.stream_chat(call)]
    finally:
        await client.aclose()


def collect(client: LlamaHttpClient, call: ChatCall = CALL) -> list[ChatChunk]:
    return asyncio.run(_collect(client, call))


def sent_body(call: ChatCall) -> dict:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return streaming(REAL_STREAM)(request)

    collect(client_for(handler), call)
    [request] = seen
    assert request.url.path == "/v1/chat/completions" and request.method == "POST"
    return json.loads(request.content)


# --- the request ---------------------------------------------------------


def test_the_body_carries_every_spec_12_key():
    call = ChatCall(
        messages=(CallMessage(Role.SYSTEM, (TextPart("Be brief."),)), CallMessage(Role.USER, (TextPart("Say hi"),))),
        sampling=ResolvedSampling(0.2, 0.9, 0, 0.05, 1.1, -0.5, seed=7),
        max_tokens=321,
        stop=("</s>", "\n\n"),
        template_kwargs={"enable_thinking": False},
        wall_clock_limit_ms=600_000,
    )
    assert sent_body(call) == {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_progress": True,  # so a cancel during the prompt is noticed at the next decode
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 0,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "presence_penalty": -0.5,
        "frequency_penalty": 0.0,
        "repeat_last_n": 64,
        "max_tokens": 321,
        "t_max_predict_ms": 600_000,
        "stop": ["</s>", "\n\n"],
        "seed": 7,
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_unset_optional_keys_are_left_out():
    body = sent_body(CALL)
    assert not {"seed", "stop", "chat_template_kwargs", "t_max_predict_ms"} & body.keys()


def test_images_become_data_url_parts_next_to_the_text():
    png = b"\x89PNG\r\n\x1a\nfake"
    call = ChatCall((CallMessage(Role.USER, (TextPart("What is this?"), Image("image/png", png))),), SAMPLING, 16)

    [message] = sent_body(call)["messages"]

    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
        ],
    }


def test_every_request_carries_the_childs_key():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={}) if request.url.path == "/props" else streaming(REAL_STREAM)(request)

    client = client_for(handler)

    async def scenario() -> None:
        [_ async for _ in client.stream_chat(CALL)]
        await client.server_capabilities()
        await client.aclose()

    asyncio.run(scenario())
    assert [r.headers["authorization"] for r in seen] == ["Bearer secret-key"] * 2


# --- the stream ----------------------------------------------------------


def test_a_real_stream_decodes_into_deltas_then_finish_usage_and_timings():
    chunks = collect(client_for(streaming(REAL_STREAM)))

    assert "".join(c.content for c in chunks) == "I'm glad"
    assert [c.finish_reason for c in chunks if c.finish_reason] == [FinishReason.LENGTH]
    assert chunks[-1].usage == Usage(prompt_tokens=32, completion_tokens=3, total_tokens=35, cached_prompt_tokens=31)
    assert chunks[-1].timings == Timings(1, 7.067, 141.5027593038064, 3, 13.993, 142.9286071607232, 31)


def test_reasoning_content_is_reasoning():
    body = sse(
        {"choices": [{"delta": {"reasoning_content": "hmm", "content": None}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}]},
    )
    chunks = collect(client_for(streaming(body + b"data: [DONE]\n\n")))
    assert [(c.reasoning, c.content, c.finish_reason) for c in chunks] == [
        ("hmm", "", None),
        ("", "Hi", FinishReason.STOP),
    ]


def test_keep_alive_pings_and_malformed_lines_are_skipped():
    body = b": ping\n\n" + b"data: {broken\n\n" + b"data: [1, 2]\n\n" + REAL_STREAM
    assert "".join(c.content for c in collect(client_for(streaming(body)))) == "I'm glad"


def test_sse_lines():
    assert parse_sse_line('data: {"a": 1}') == {"a": 1}
    assert parse_sse_line('data:{"a": 1}') == {"a": 1}
    assert parse_sse_line("data: [DONE]") is DONE
    assert parse_sse_line("data: {broken") is None
    assert parse_sse_line("data: " + "[" * 100_000) is None  # deeper than the parser recurses
    assert parse_sse_line(": keep-alive") is None
    assert parse_sse_line("") is None


@given(st.text())
def test_no_line_crashes_the_parser(line):
    result = parse_sse_line(line)
    assert result is None or result is DONE or isinstance(result, dict)


def test_defect_4_a_stream_that_ends_without_done_is_a_failure_not_a_stop():
    received: list[ChatChunk] = []

    async def scenario() -> None:
        client = client_for(streaming(FIRST_DELTAS))  # cut before the finish, usage and [DONE]
        try:
            async for chunk in client.stream_chat(CALL):
                received.append(chunk)
        finally:
            await client.aclose()

    with pytest.raises(EngineFailed, match="ended early") as caught:
        asyncio.run(scenario())
    assert not isinstance(caught.value, EngineTimedOut)
    assert "".join(c.content for c in received) == "I'm glad"  # what came is still delivered


def test_defect_4_even_a_finished_stream_must_end_with_done():
    without_done = REAL_STREAM.removesuffix(b"data: [DONE]\n\n")
    with pytest.raises(EngineFailed, match="ended early"):
        collect(client_for(streaming(without_done)))


# --- errors (defect 5) ---------------------------------------------------


def error_body(kind: str, message: str, code: int, **extra: object) -> dict:
    # tools/server/server-common.cpp format_error_response, wrapped as res->error() does.
    return {"error": {"code": code, "message": message, "type": kind, **extra}}


ERRORS = [
    ("invalid_request_error", 400, EngineRejected, "llama-server rejected the request: bad field"),
    ("not_supported_error", 501, EngineRejected, "llama-server rejected the request: bad field"),
    ("not_found_error", 404, EngineRejected, "llama-server rejected the request: bad field"),
    ("unavailable_error", 503, EngineFailed, "llama-server is unavailable: bad field"),
    ("server_error", 500, EngineFailed, "server_error"),
    ("authentication_error", 401, EngineFailed, "refused llamagate's key"),
    ("permission_error", 403, EngineFailed, "refused llamagate's key"),
]


@pytest.mark.parametrize(("kind", "code", "error", "words"), ERRORS)
def test_defect_5_an_http_error_is_mapped_by_its_type(kind, code, error, words):
    body = json.dumps(error_body(kind, "bad field", code)).encode()
    with pytest.raises(error) as caught:
        collect(client_for(streaming(body, status=code)))
    assert type(caught.value) is error and words in str(caught.value) and "bad field" in str(caught.value)


@pytest.mark.parametrize(("kind", "code", "error", "words"), ERRORS)
def test_defect_5_an_error_frame_in_mid_stream_is_mapped_by_its_type(kind, code, error, words):
    # After the first chunk llama-server reports errors as a frame, then
    # closes the stream without [DONE] (server-context.cpp, format_error).
    body = FIRST_DELTAS + sse(error_body(kind, "bad field", code))
    with pytest.raises(error) as caught:
        collect(client_for(streaming(body)))
    assert type(caught.value) is error and words in str(caught.value)


def test_defect_5_a_prompt_larger_than_a_slot_is_context_exceeded_with_the_numbers():
    with pytest.raises(ContextExceeded) as caught:
        collect(client_for(streaming(CONTEXT_EXCEEDED_BODY, status=400)))

    assert (caught.value.prompt_tokens, caught.value.context_length) == (431, 256)
    assert str(caught.value) == (
        "the request needs 431 tokens; a slot of the loaded model holds 256: "
        "shorten the conversation or load with a larger context_length"
    )


def test_defect_5_context_exceeded_in_mid_stream_too():
    frame = error_body("exceed_context_size_error", "too big", 400, n_prompt_tokens=900, n_ctx=512)
    with pytest.raises(ContextExceeded, match="needs 900 tokens; a slot of the loaded model holds 512"):
        collect(client_for(streaming(FIRST_DELTAS + sse(frame))))


def test_defect_5_an_error_without_a_type_falls_back_on_the_status():
    with pytest.raises(EngineRejected, match="nope"):
        collect(client_for(streaming(b'{"error": {"message": "nope"}}', status=422)))
    with pytest.raises(EngineFailed, match="500.*Internal"):
        collect(client_for(streaming(b"500 Internal Server Error", status=500)))


# --- the transport (defect 6) ----------------------------------------------


async def _silent_server(respond_headers: bool) -> tuple[asyncio.AbstractServer, int]:
    """A server that accepts and then says nothing (after the headers, if asked)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if respond_headers:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
        await asyncio.sleep(3600)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("after_headers", [False, True])
def test_defect_6_a_silent_llama_server_is_a_timeout_not_a_lost_connection(after_headers):
    async def scenario() -> None:
        server, port = await _silent_server(after_headers)
        client = LlamaHttpClient(f"http://127.0.0.1:{port}", "k", read_timeout=0.3)
        try:
            [_ async for _ in client.stream_chat(CALL)]
        finally:
            await client.aclose()
            server.close()

    with pytest.raises(EngineTimedOut, match="sent nothing for 0.3 s") as caught:
        asyncio.run(scenario())
    assert "lost connection" not in str(caught.value)


def test_defect_6_a_refused_connection_is_a_lost_connection():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario() -> None:
        client = LlamaHttpClient(f"http://127.0.0.1:{port}", "k")
        try:
            [_ async for _ in client.stream_chat(CALL)]
        finally:
            await client.aclose()

    with pytest.raises(EngineFailed, match="lost connection to llama-server") as caught:
        asyncio.run(scenario())
    assert not isinstance(caught.value, EngineTimedOut)


def test_defect_6_a_connection_reset_in_mid_stream_is_a_lost_connection():
    async def body() -> AsyncIterator[bytes]:
        yield FIRST_DELTAS
        raise httpx.ReadError("connection reset by peer")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    with pytest.raises(EngineFailed, match="lost connection to llama-server") as caught:
        collect(client_for(handler))
    assert not isinstance(caught.value, EngineTimedOut)


def test_cancelling_while_waiting_for_the_first_byte_returns_at_once():
    async def scenario() -> None:
        server, port = await _silent_server(False)
        client = LlamaHttpClient(f"http://127.0.0.1:{port}", "k", read_timeout=600)
        consumer = asyncio.create_task(_collect(client, CALL))
        await asyncio.sleep(0.2)
        consumer.cancel()
        try:
            await asyncio.wait_for(consumer, timeout=10)  # far below the 600 s read timeout
        finally:
            server.close()

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scenario())


# --- defensive decoding (defect 7; field by field in test_chat_wire.py) -------


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.just(10**400) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _set(path: tuple[str | int, ...], value: object) -> dict:
    payload = json.loads(REAL_STREAM.split(b"data: ")[-2])
    payload["choices"] = [{"finish_reason": "stop", "index": 0, "delta": {"content": "x", "reasoning_content": "y"}}]
    target: object = payload
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return payload


POSITIONS = [
    ("choices",),
    ("choices", 0),
    ("choices", 0, "delta"),
    ("choices", 0, "delta", "content"),
    ("choices", 0, "delta", "reasoning_content"),
    ("choices", 0, "finish_reason"),
    ("usage",),
    *(("usage", f) for f in ("prompt_tokens", "completion_tokens", "total_tokens")),
    ("timings",),
    *(("timings", f) for f in ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                              "predicted_per_second", "cache_n")),
]  # fmt: skip


@given(position=st.sampled_from(POSITIONS), value=JSON_VALUES)
def test_defect_7_any_json_value_survives_the_whole_stream(position, value):
    # Through the wire too: json.dumps writes NaN and Infinity, and Python's
    # json reads them back, as it would from a misbehaving server.
    body = sse(_set(position, value)) + b"data: [DONE]\n\n"
    [chunk] = collect(client_for(streaming(body)))
    assert isinstance(chunk, ChatChunk)


# --- /props ----------------------------------------------------------------

# The pinned build's /props for SmolLM2 (the parts we read).
REAL_PROPS = {
    "chat_template_caps": {
        "supports_object_arguments": False, "supports_parallel_tool_calls": False,
        "supports_preserve_reasoning": False, "supports_reasoning_effort": False, "supports_string_content": True,
        "supports_system_role": True, "supports_tool_calls": False, "supports_tools": False,
        "supports_typed_content": False,
    },
    "modalities": {"vision": False, "video": False, "audio": False},
}  # fmt: skip


def props_of(handler: Callable[[httpx.Request], httpx.Response]) -> ServerCapabilities:
    async def scenario() -> ServerCapabilities:
        client = client_for(handler)
        try:
            return await client.server_capabilities()
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def test_server_capabilities_come_from_props():
    assert props_of(lambda r: httpx.Response(200, json=REAL_PROPS)) == ServerCapabilities(False, False, False)
    tools_vision = {"chat_template_caps": {"supports_tools": True, "supports_preserve_reasoning": True},
                    "modalities": {"vision": True}}  # fmt: skip
    assert props_of(lambda r: httpx.Response(200, json=tools_vision)) == ServerCapabilities(True, True, True)


@pytest.mark.parametrize(
    "props",
    [{}, {"chat_template_caps": None, "modalities": "x"}, {"chat_template_caps": {"supports_tools": "yes"}}, [], None],
)
def test_missing_or_malformed_props_say_nothing(props):
    assert capabilities_from_props(props) == ServerCapabilities(None, None, None)


def test_props_that_cannot_be_read_say_nothing():
    assert props_of(lambda r: httpx.Response(500, json=REAL_PROPS)) == ServerCapabilities()
    assert props_of(lambda r: httpx.Response(200, content=b"<html>")) == ServerCapabilities()

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    assert props_of(refused) == ServerCapabilities()


# --- prompt progress (issue 8) --------------------------------------------

# Captured from llama-server (-b 64) with "return_progress": true: one chunk
# per decode of the prompt, before the first token.
PROGRESS_STREAM = (
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
    b'"object":"chat.completion.chunk","prompt_progress":{"total":200,"cache":0,"processed":0,"time_ms":0}}\n\n'
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
    b'"object":"chat.completion.chunk","prompt_progress":{"total":200,"cache":0,"processed":64,"time_ms":186}}\n\n'
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
    b'"object":"chat.completion.chunk","prompt_progress":{"total":200,"cache":0,"processed":128,"time_ms":381}}\n\n'
    b'data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"object":"chat.completion.chunk"}\n\n'
    b"data: [DONE]\n\n"
)


def test_prompt_progress_chunks_decode_to_steps_and_carry_no_text():
    chunks = collect(client_for(streaming(PROGRESS_STREAM)))

    assert [c.progress for c in chunks[:3]] == [PromptStep(0, 0.0), PromptStep(64, 186.0), PromptStep(128, 381.0)]
    assert all(c.content == "" and c.reasoning == "" for c in chunks)
    assert chunks[3].progress is None and chunks[3].finish_reason is FinishReason.LENGTH


def test_a_stream_asks_for_its_own_connection_which_llama_server_closes_after_it():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return streaming(REAL_STREAM)(request)

    collect(client_for(handler))
    assert seen[0].headers["connection"] == "close"


# --- token counting (issue 9) ----------------------------------------------

COUNT_CALL = ChatCall(
    messages=(CallMessage(Role.USER, (TextPart("weather?"),)),),
    sampling=SAMPLING, max_tokens=64, template_kwargs={"enable_thinking": False},
    tools=(Tool("get_weather"),),
)


def count_with(handler: Callable[[httpx.Request], httpx.Response]) -> int:
    async def scenario() -> int:
        client = client_for(handler)
        try:
            return await client.count_tokens(COUNT_CALL)
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def test_counting_tokens_sends_what_the_template_sees_to_llama_servers_own_counter():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"input_tokens": 42})

    assert count_with(handler) == 42
    [request] = seen
    assert (request.method, request.url.path) == ("POST", "/v1/chat/completions/input_tokens")
    body = json.loads(request.content)
    # Only what the template renders: no sampling, no streaming.
    assert body == {
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
                                                    "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "auto",
        "chat_template_kwargs": {"enable_thinking": False},
    }
    assert request.headers["authorization"] == "Bearer secret-key"


def test_a_count_refused_by_llama_server_is_its_error():
    with pytest.raises(ContextExceeded) as caught:
        count_with(lambda r: httpx.Response(400, content=CONTEXT_EXCEEDED_BODY))
    assert caught.value.prompt_tokens == 431
    body = error_body("invalid_request_error", "bad tools", 400)
    with pytest.raises(EngineRejected, match="bad tools"):
        count_with(lambda r: httpx.Response(400, json=body))


def test_a_count_llama_server_fails_on_is_the_conversations_fault_not_a_retry():
    body = error_body("server_error", "Failed to load image or audio file", 500)
    with pytest.raises(EngineRejected, match="could not count this conversation.*Failed to load image"):
        count_with(lambda r: httpx.Response(500, json=body))


@pytest.mark.parametrize("answer", [{}, {"input_tokens": "42"}, {"input_tokens": -1}, {"input_tokens": True}, [42]])
def test_a_count_without_a_count_is_an_engine_failure(answer):
    with pytest.raises(EngineFailed, match="without input_tokens"):
        count_with(lambda r: httpx.Response(200, json=answer))


def test_a_count_on_a_lost_connection_is_an_engine_failure():
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(EngineFailed, match="lost connection"):
        count_with(refused)


# --- logprobs through the stream (issue 9) -------------------------------------

LOGPROB_FRAME = {"choices": [{"delta": {"content": "Hi"}, "finish_reason": None, "logprobs": {"content": [
    {"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
     "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}]}]}}]}


def test_the_stream_decodes_logprobs_as_the_request_asked():
    def logprobs_of(top_logprobs: int | None):
        call = ChatCall((text_call_message("hi"),), replace(SAMPLING, top_logprobs=top_logprobs), 8)
        [chunk] = collect(client_for(streaming(sse(LOGPROB_FRAME) + b"data: [DONE]\n\n")), call)
        return chunk.logprobs

    assert logprobs_of(None) == ()  # not asked: whatever came is not passed on
    [token] = logprobs_of(0)
    assert (token.token, token.logprob, token.data, token.top) == ("Hi", -0.25, b"Hi", ())
    [token] = logprobs_of(1)
    assert [(a.token, a.logprob) for a in token.top] == [("Hi", -0.25)]


def text_call_message(text: str) -> CallMessage:
    return CallMessage(Role.USER, (TextPart(text),))
