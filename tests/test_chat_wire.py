"""llama-server's chat JSON (adapters/llama_chat_wire.py): the body built from
a ChatCall, and one streamed chunk decoded, whatever its fields hold.

The shapes are llama-server's (tools/server/server-common.cpp
``oaicompat_chat_params_parse``, server-task.cpp ``to_json_oaicompat_chat_stream``).
"""

from __future__ import annotations

import base64
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.adapters.llama_chat_wire import chat_body, chunk_from_json, template_body
from llamagate.domain.batching import PromptStep
from llamagate.domain.chat import (
    CallMessage,
    ChatCall,
    ChatChunk,
    Dry,
    FinishReason,
    FormatKind,
    Image,
    ResolvedSampling,
    ResponseFormat,
    Role,
    TextPart,
    Timings,
    TokenAlternative,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    Usage,
)

SAMPLING = ResolvedSampling(temperature=0.6, top_p=0.95, top_k=20, min_p=0.01, repetition_penalty=1.0,
                            presence_penalty=0.0)
ASK = CallMessage(Role.USER, (TextPart("weather in Paris?"),))
U32 = 0xFFFFFFFF


def call(*messages: CallMessage, sampling: ResolvedSampling = SAMPLING, **extra) -> ChatCall:
    return ChatCall(messages or (ASK,), sampling, 64, **extra)


def body(*messages: CallMessage, **extra) -> dict:
    # Through JSON and back, as llama-server would read it.
    return json.loads(json.dumps(chat_body(call(*messages, **extra))))


# --- tools -----------------------------------------------------------------------

WEATHER = Tool("get_weather", "Weather in a city", '{"type": "object", "properties": {"city": {"type": "string"}}}')


def test_tools_go_as_openai_function_tools_with_the_choice():
    sent = body(tools=(WEATHER, Tool("get_time")), tool_choice=ToolChoiceMode.REQUIRED)
    assert sent["tools"] == [
        {"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        # No schema: an object without arguments; no description: none sent.
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert sent["tool_choice"] == "required"
    assert "parallel_tool_calls" not in sent  # unset: the template's own default


@pytest.mark.parametrize("mode", list(ToolChoiceMode))
@pytest.mark.parametrize("parallel", [True, False])
def test_the_tool_choice_and_parallel_calls_are_spelled_as_openai_does(mode, parallel):
    sent = body(tools=(WEATHER,), tool_choice=mode, parallel_tool_calls=parallel)
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == (mode.value, parallel)


def test_no_tools_no_tool_keys():
    sent = body(tool_choice=ToolChoiceMode.NONE, parallel_tool_calls=True)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & sent.keys()


def test_an_assistant_turn_carries_its_calls_and_reasoning_and_a_tool_turn_its_call_id():
    calls = (ToolCall("call_1", "get_weather", '{"city": "Paris"}'), ToolCall("call_2", "t", ""))
    asked = CallMessage(Role.ASSISTANT, (), reasoning="Paris: call the tool", tool_calls=calls)
    answered = CallMessage(Role.TOOL, (TextPart("sunny"),), tool_call_id="call_1")
    assert body(ASK, asked, answered)["messages"][1:] == [
        {"role": "assistant", "content": "", "reasoning_content": "Paris: call the tool", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "t", "arguments": "{}"}},
        ]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]


# --- structured output -------------------------------------------------------------


def test_a_json_schema_goes_as_response_format_json_schema():
    schema = '{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}'
    sent = body(response_format=ResponseFormat(FormatKind.JSON_SCHEMA, schema))
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"schema": json.loads(schema)}}
    assert "grammar" not in sent


def test_json_object_and_grammar_and_plain_text():
    assert body(response_format=ResponseFormat(FormatKind.JSON_OBJECT))["response_format"] == {"type": "json_object"}
    grammar = body(response_format=ResponseFormat(FormatKind.GRAMMAR, 'root ::= "yes" | "no"'))
    assert grammar["grammar"] == 'root ::= "yes" | "no"' and "response_format" not in grammar
    assert not {"grammar", "response_format"} & body().keys()


# --- sampling ------------------------------------------------------------------------


def sampled(**changes) -> dict:
    return body(sampling=ResolvedSampling(**{**SAMPLING.__dict__, **changes}))


def test_dry_is_sent_only_as_far_as_it_is_set():
    assert not any(k.startswith("dry_") for k in body())
    sent = sampled(dry=Dry(multiplier=0.8, base=1.75, allowed_length=2, penalty_last_n=-1,
                           sequence_breakers=("\n", ":")))
    assert {k: v for k, v in sent.items() if k.startswith("dry_")} == {
        "dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": -1,
        "dry_sequence_breakers": ["\n", ":"]}
    assert {k for k in sampled(dry=Dry(multiplier=0.5)) if k.startswith("dry_")} == {"dry_multiplier"}


def test_logit_bias_goes_as_token_bias_pairs():
    assert sampled(logit_bias=((15, -100.0), (7, 2.5)))["logit_bias"] == [[15, -100.0], [7, 2.5]]
    assert "logit_bias" not in body()


def test_frequency_penalty_and_repeat_last_n_are_always_set():
    sent = sampled(frequency_penalty=0.5, repeat_last_n=-1)
    assert (sent["frequency_penalty"], sent["repeat_last_n"]) == (0.5, -1)


def test_top_logprobs_zero_asks_for_one_alternative_that_decoding_drops():
    # llama-server reads top_logprobs 0 as "no probabilities at all".
    sent = sampled(top_logprobs=0)
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 1)
    tokens = chunk_from_json(LOGPROB_CHUNK, alternatives=0).logprobs
    assert [t.token for t in tokens] == ["Hi", ""] and all(t.top == () for t in tokens)
    assert (sampled(top_logprobs=5)["top_logprobs"], sampled(top_logprobs=5)["logprobs"]) == (5, True)
    assert not {"logprobs", "top_logprobs"} & body().keys()


# --- content parts ---------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(40, 80))


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_images_go_as_data_urls_in_their_order_among_the_text():
    message = CallMessage(Role.USER, (TextPart("first"), Image("image/png", PNG), TextPart("then"),
                                      Image("image/jpeg", JPEG), Image("image/png", PNG[::-1])))
    [sent] = body(message)["messages"]
    assert sent["content"] == [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": data_url("image/png", PNG)}},
        {"type": "text", "text": "then"},
        {"type": "image_url", "image_url": {"url": data_url("image/jpeg", JPEG)}},
        {"type": "image_url", "image_url": {"url": data_url("image/png", PNG[::-1])}},
    ]


def test_text_parts_alone_are_one_string():
    [sent] = body(CallMessage(Role.USER, (TextPart("a"), TextPart("b"))))["messages"]
    assert sent == {"role": "user", "content": "ab"}


def test_the_template_body_is_what_the_template_sees_and_nothing_of_sampling():
    c = call(ASK, tools=(WEATHER,), template_kwargs={"enable_thinking": True}, stop=("x",),
             response_format=ResponseFormat(FormatKind.JSON_OBJECT), sampling=SAMPLING)
    assert template_body(c) == {
        "messages": chat_body(c)["messages"],
        "tools": chat_body(c)["tools"],
        "tool_choice": "auto",
        "chat_template_kwargs": {"enable_thinking": True},
    }


# --- decoding a chunk --------------------------------------------------------------------


def chunk(delta: object = None, **top: object) -> ChatChunk:
    choice = {"index": 0, "finish_reason": None, "delta": {} if delta is None else delta}
    return chunk_from_json({"choices": [choice], **top})


def test_streamed_tool_call_pieces_decode_by_index():
    first = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"ci'}}]}
    more = {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}},
                           {"index": 1, "id": "call_2", "function": {"name": "get_time", "arguments": ""}}]}
    assert chunk(first).tool_calls == (ToolCallDelta(0, "call_1", "get_weather", '{"ci'),)
    assert chunk(more).tool_calls == (ToolCallDelta(0, "", "", 'ty": "Paris"}'),
                                      ToolCallDelta(1, "call_2", "get_time", ""))


LOGPROB_CHUNK = {"choices": [{"index": 0, "finish_reason": None, "delta": {"content": "Hi"}, "logprobs": {"content": [
    {"id": 9, "token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
        {"id": 9, "token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
        {"id": 5, "token": "\u00e9", "logprob": -1.5, "bytes": [195, 169]},
    ]},
    {"id": 3, "token": "", "logprob": -3.0, "bytes": [240, 159], "top_logprobs": []},
]}}]}


def test_logprobs_decode_with_as_many_alternatives_as_asked():
    first, split = chunk_from_json(LOGPROB_CHUNK, alternatives=1).logprobs
    assert first == TokenLogprob("Hi", -0.25, b"Hi", (TokenAlternative("Hi", -0.25, b"Hi"),))
    # A token that splits a UTF-8 character: its text is empty, its bytes tell.
    assert split == TokenLogprob("", -3.0, b"\xf0\x9f", ())
    [first, _] = chunk_from_json(LOGPROB_CHUNK, alternatives=20).logprobs
    assert [a.data for a in first.top] == [b"Hi", "é".encode()]
    assert chunk_from_json(LOGPROB_CHUNK).logprobs == ()  # not asked for: not decoded


def test_cached_prompt_tokens_and_draft_counts_decode():
    decoded = chunk_from_json({"choices": [], "usage": {
        "prompt_tokens": 32, "completion_tokens": 3, "total_tokens": 35,
        "prompt_tokens_details": {"cached_tokens": 31}},
        "timings": {"prompt_n": 1, "predicted_n": 3, "cache_n": 31, "draft_n": 12, "draft_n_accepted": 9}})
    assert decoded.usage == Usage(32, 3, 35, cached_prompt_tokens=31)
    assert decoded.timings == Timings(prompt_n=1, predicted_n=3, cache_n=31, draft_n=12, draft_accepted_n=9)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("tool_calls", FinishReason.TOOL_CALLS),
        ("content_filter", FinishReason.STOP),  # unknown: still an end
        (None, None),
        ("", None),
        (3, None),
    ],
)
def test_finish_reasons_map_to_the_enum(raw, expected):
    assert chunk_from_json({"choices": [{"delta": {}, "finish_reason": raw}]}).finish_reason is expected


# --- hostile values (defect 7) --------------------------------------------------------------


def test_defect_7_null_usage_and_timings_fields_decode_as_zero():
    decoded = chunk_from_json({
        "usage": {"completion_tokens": None, "prompt_tokens": 32, "total_tokens": None},
        "timings": {"prompt_n": None, "predicted_ms": None, "predicted_n": "3", "cache_n": 31}})
    assert decoded.usage == Usage(prompt_tokens=32, completion_tokens=0, total_tokens=0)
    assert decoded.timings == Timings(cache_n=31)


def test_defect_7_null_usage_and_timings_decode_as_absent():
    decoded = chunk_from_json({"choices": [], "usage": None, "timings": None})
    assert (decoded.usage, decoded.timings) == (None, None)


def test_counts_are_clamped_to_what_uint32_fields_carry_and_never_negative():
    decoded = chunk_from_json({
        "choices": [{"delta": {"tool_calls": [{"index": -4, "id": "a"}, {"index": 2**70, "id": "b"},
                                              {"index": 1.9e300, "id": "c"}, {"index": True, "id": "d"}]}}],
        "usage": {"prompt_tokens": 10**400, "completion_tokens": -5, "total_tokens": 1e400},
        "timings": {"draft_n": 2**32, "draft_n_accepted": 2**32 - 1, "prompt_ms": 10**400, "predicted_ms": -1e400}})
    assert [f.index for f in decoded.tool_calls] == [0, U32, U32, 0]
    assert decoded.usage == Usage(U32, 0, 0)
    assert decoded.timings is not None
    assert (decoded.timings.draft_n, decoded.timings.draft_accepted_n) == (U32, U32)
    assert (decoded.timings.prompt_ms, decoded.timings.predicted_ms) == (0.0, 0.0)  # unreadable: not a number


@pytest.mark.parametrize("raw", [[256], [-1], [1.5], "AB", [True, 300], {"0": 1}])
def test_token_bytes_that_are_not_bytes_are_empty(raw):
    payload = json.loads(json.dumps(LOGPROB_CHUNK))
    payload["choices"][0]["logprobs"]["content"][0]["bytes"] = raw
    assert chunk_from_json(payload, alternatives=1).logprobs[0].data == b""


@given(st.dictionaries(st.sampled_from(["processed", "time_ms", "total"]),
                       st.one_of(st.none(), st.integers(), st.floats(), st.text(), st.booleans())))
def test_a_malformed_progress_object_decodes_without_failing(progress):
    decoded = chunk_from_json({"prompt_progress": progress})
    assert decoded.progress is not None and isinstance(decoded.progress.processed, int)
    assert decoded.progress.processed >= 0 and math.isfinite(decoded.progress.elapsed_ms)


def test_prompt_progress_decodes_to_a_step():
    assert chunk_from_json({"prompt_progress": {"processed": 64, "time_ms": 186}}).progress == PromptStep(64, 186.0)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.just(10**400) | st.just(-(2**64)) | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def full_chunk() -> dict:
    """A chunk with every field we read, each well formed."""
    return {
        "choices": [{"index": 0, "finish_reason": "tool_calls", "delta": {
            "content": "x", "reasoning_content": "y",
            "tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            "logprobs": json.loads(json.dumps(LOGPROB_CHUNK["choices"][0]["logprobs"]))}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                  "prompt_tokens_details": {"cached_tokens": 1}},
        "timings": {f: 1 for f in ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                                   "predicted_per_second", "cache_n", "draft_n", "draft_n_accepted")},
        "prompt_progress": {"processed": 1, "time_ms": 1},
    }


def positions(value: object, path: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``value``."""
    found = [path] if path else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        found += positions(inner, (*path, key))
    return found


POSITIONS = positions(full_chunk())


def _set(path: tuple, value: object) -> dict:
    payload = full_chunk()
    target = payload
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return payload


def _valid(decoded: ChatChunk) -> None:
    """Every field of the decoded chunk has its type, every count fits uint32, every float is finite."""
    counts = [f.index for f in decoded.tool_calls]
    floats = [t.logprob for t in decoded.logprobs] + [a.logprob for t in decoded.logprobs for a in t.top]
    if decoded.usage is not None:
        counts += list(decoded.usage.__dict__.values())
    if decoded.timings is not None:
        numbers = decoded.timings.__dict__
        counts += [v for k, v in numbers.items() if not k.endswith(("_ms", "_second"))]
        floats += [v for k, v in numbers.items() if k.endswith(("_ms", "_second"))]
    if decoded.progress is not None:
        counts.append(decoded.progress.processed)
        floats.append(decoded.progress.elapsed_ms)
    assert all(type(n) is int and 0 <= n <= U32 for n in counts)
    assert all(type(x) is float and math.isfinite(x) for x in floats)
    texts = [decoded.content, decoded.reasoning, *(s for f in decoded.tool_calls for s in (f.id, f.name, f.arguments)),
             *(t.token for t in decoded.logprobs)]
    assert all(type(s) is str for s in texts)
    assert all(type(t.data) is bytes for t in decoded.logprobs)
    assert decoded.finish_reason is None or isinstance(decoded.finish_reason, FinishReason)


def test_every_position_is_covered_and_a_well_formed_chunk_decodes_in_full():
    assert len(POSITIONS) > 40
    decoded = chunk_from_json(full_chunk(), alternatives=20)
    assert (decoded.content, decoded.reasoning, decoded.finish_reason) == ("x", "y", FinishReason.TOOL_CALLS)
    assert decoded.tool_calls == (ToolCallDelta(0, "c", "f", "{}"),) and len(decoded.logprobs) == 2
    assert decoded.timings == Timings(1, 1.0, 1.0, 1, 1.0, 1.0, 1, 1, 1)
    _valid(decoded)


@given(position=st.sampled_from(POSITIONS), value=JSON_VALUES, alternatives=st.none() | st.integers(0, 20))
def test_defect_7_any_json_value_in_any_field_decodes_without_raising(position, value, alternatives):
    _valid(chunk_from_json(_set(position, value), alternatives=alternatives))


@given(JSON_VALUES)
def test_any_json_object_at_all_decodes_without_raising(payload):
    _valid(chunk_from_json(payload if isinstance(payload, dict) else {"choices": payload}, alternatives=3))
