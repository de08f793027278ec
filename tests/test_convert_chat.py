"""The gRPC chat messages <-> the domain's types (server/convert_chat.py):
every field, and "unset" kept apart from zero."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain import chat
from llamagate.domain.errors import InvalidArgument
from llamagate.server import convert_chat
from llamagate.v1 import llamagate_pb2 as pb

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 8


def convert(**fields) -> chat.GenerateRequest:
    fields.setdefault("messages", [pb.Message(role=pb.ROLE_USER, text="hi")])
    return convert_chat.generate_request(pb.GenerateRequest(**fields))


# --- messages --------------------------------------------------------------------


def test_every_role_maps_and_an_unset_or_unknown_role_is_refused_by_its_path():
    roles = {pb.ROLE_SYSTEM: chat.Role.SYSTEM, pb.ROLE_USER: chat.Role.USER,
             pb.ROLE_ASSISTANT: chat.Role.ASSISTANT, pb.ROLE_TOOL: chat.Role.TOOL}
    for raw, role in roles.items():
        assert convert(messages=[pb.Message(role=raw, text="x")]).messages[0].role is role
    for bad in (pb.ROLE_UNSPECIFIED, 99):
        with pytest.raises(InvalidArgument) as caught:
            convert(messages=[pb.Message(role=pb.ROLE_USER), pb.Message(role=bad, text="x")])
        assert caught.value.field == "messages[1].role"


def test_the_text_shorthand_comes_before_the_parts_in_order():
    message = pb.Message(role=pb.ROLE_USER, text="look:", parts=[
        pb.ContentPart(image=pb.Image(data=PNG, mime_type="image/png")),
        pb.ContentPart(text="and"),
        pb.ContentPart(image=pb.Image(data=PNG)),
    ])
    [converted] = convert(messages=[message]).messages
    assert converted.parts == (chat.TextPart("look:"), chat.ImagePart(PNG, "image/png"), chat.TextPart("and"),
                               chat.ImagePart(PNG, ""))


def test_no_text_and_no_parts_is_no_parts():
    assert convert(messages=[pb.Message(role=pb.ROLE_ASSISTANT)]).messages[0].parts == ()


def test_assistant_history_and_tool_answers_keep_every_field():
    asked = pb.Message(role=pb.ROLE_ASSISTANT, reasoning="think", tool_calls=[
        pb.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}'), pb.ToolCall(id="c2", name="t")])
    answered = pb.Message(role=pb.ROLE_TOOL, text="sunny", tool_call_id="call_1")
    _, a, t = convert(messages=[pb.Message(role=pb.ROLE_USER, text="?"), asked, answered]).messages
    assert a == chat.ChatMessage(chat.Role.ASSISTANT, (), "think", (
        chat.ToolCall("call_1", "get_weather", '{"city": "Paris"}'), chat.ToolCall("c2", "t", "")))
    assert t == chat.ChatMessage(chat.Role.TOOL, (chat.TextPart("sunny"),), tool_call_id="call_1")


# --- tools and formats --------------------------------------------------------------


def test_tools_map_field_by_field():
    raw = [pb.Tool(name="get_weather", description="d", parameters='{"type": "object"}'), pb.Tool(name="t")]
    assert convert(tools=raw).tools == (chat.Tool("get_weather", "d", '{"type": "object"}'), chat.Tool("t"))


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, chat.ToolChoice(chat.ToolChoiceMode.AUTO)),
        (pb.ToolChoice(), chat.ToolChoice(chat.ToolChoiceMode.AUTO)),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_UNSPECIFIED), chat.ToolChoice(chat.ToolChoiceMode.AUTO)),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_AUTO), chat.ToolChoice(chat.ToolChoiceMode.AUTO)),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE), chat.ToolChoice(chat.ToolChoiceMode.NONE)),
        (pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED), chat.ToolChoice(chat.ToolChoiceMode.REQUIRED)),
        (pb.ToolChoice(name="get_weather"), chat.ToolChoice(chat.ToolChoiceMode.REQUIRED, "get_weather")),
    ],
)
def test_the_tool_choice_maps_and_a_named_tool_is_required(choice, expected):
    assert convert(**({} if choice is None else {"tool_choice": choice})).tool_choice == expected


def test_an_unknown_tool_choice_mode_is_refused_by_its_path():
    with pytest.raises(InvalidArgument) as caught:
        convert(tool_choice=pb.ToolChoice(mode=42))
    assert caught.value.field == "tool_choice.mode"


def test_a_tool_choice_naming_no_tool_is_refused_by_its_path():
    with pytest.raises(InvalidArgument) as caught:
        convert(tool_choice=pb.ToolChoice(name=""))  # set, but empty: not "any tool"
    assert caught.value.field == "tool_choice.name"


def test_parallel_tool_calls_unset_is_none_and_false_is_false():
    assert convert().parallel_tool_calls is None
    assert convert(parallel_tool_calls=False).parallel_tool_calls is False
    assert convert(parallel_tool_calls=True).parallel_tool_calls is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, chat.ResponseFormat()),
        (pb.ResponseFormat(json_schema='{"type": "object"}'),
         chat.ResponseFormat(chat.FormatKind.JSON_SCHEMA, '{"type": "object"}')),
        (pb.ResponseFormat(json_object=True), chat.ResponseFormat(chat.FormatKind.JSON_OBJECT)),
        (pb.ResponseFormat(json_object=False), chat.ResponseFormat()),  # "not a JSON object": plain text
        (pb.ResponseFormat(grammar='root ::= "x"'), chat.ResponseFormat(chat.FormatKind.GRAMMAR, 'root ::= "x"')),
    ],
)
def test_the_response_format_maps_by_its_oneof(raw, expected):
    assert convert(**({} if raw is None else {"response_format": raw})).response_format == expected


# --- sampling and reasoning ------------------------------------------------------------


def test_unset_sampling_is_all_none_and_zero_is_a_real_value():
    assert convert().sampling == chat.Sampling()
    zeros = pb.Sampling(temperature=0, top_p=0, top_k=0, min_p=0, repetition_penalty=0, presence_penalty=0,
                        max_tokens=0, seed=0, frequency_penalty=0, repeat_last_n=0, top_logprobs=0,
                        dry=pb.Dry(multiplier=0, base=0, allowed_length=0, penalty_last_n=0))
    s = convert(sampling=zeros).sampling
    assert s == chat.Sampling(temperature=0.0, top_p=0.0, top_k=0, min_p=0.0, repetition_penalty=0.0,
                              presence_penalty=0.0, max_tokens=0, seed=0, frequency_penalty=0.0, repeat_last_n=0,
                              top_logprobs=0, dry=chat.Dry(0.0, 0.0, 0, 0))


def test_every_sampling_field_is_carried():
    raw = pb.Sampling(temperature=0.5, top_p=0.25, top_k=-3, min_p=0.125, repetition_penalty=1.5,
                      presence_penalty=-1.0, max_tokens=100, stop=["</s>", "\n"], seed=2**40, frequency_penalty=0.75,
                      repeat_last_n=-1, top_logprobs=5,
                      dry=pb.Dry(multiplier=0.5, base=1.75, allowed_length=2, penalty_last_n=-1,
                                 sequence_breakers=["\n", "*"]),
                      logit_bias=[pb.LogitBias(token=15, bias=-100), pb.LogitBias(token=7, bias=2.5)])
    assert convert(sampling=raw).sampling == chat.Sampling(
        temperature=0.5, top_p=0.25, top_k=-3, min_p=0.125, repetition_penalty=1.5, presence_penalty=-1.0,
        max_tokens=100, stop=("</s>", "\n"), seed=2**40, frequency_penalty=0.75, repeat_last_n=-1,
        dry=chat.Dry(0.5, 1.75, 2, -1, ("\n", "*")), logit_bias=((15, -100.0), (7, 2.5)), top_logprobs=5)


OPTIONAL_FLOATS = ["temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"]
OPTIONAL_INTS = ["top_k", "max_tokens", "repeat_last_n"]
float32s = st.floats(width=32, allow_nan=False)


@given(floats=st.dictionaries(st.sampled_from(OPTIONAL_FLOATS), float32s),
       ints=st.dictionaries(st.sampled_from(OPTIONAL_INTS), st.integers(-(2**31), 2**31 - 1)))
def test_a_sampling_field_is_none_exactly_when_the_client_left_it_unset(floats, ints):
    s = convert(sampling=pb.Sampling(**floats, **ints)).sampling
    for name in OPTIONAL_FLOATS + OPTIONAL_INTS:
        expected = {**floats, **ints}.get(name)
        assert getattr(s, name) == expected, name


def test_a_nan_sent_by_a_client_reaches_validation_as_nan():
    assert math.isnan(convert(sampling=pb.Sampling(temperature=math.nan)).sampling.temperature)


def test_reasoning_controls_keep_unset_apart_from_false():
    assert convert().reasoning == chat.ReasoningControls()
    raw = pb.ReasoningControls(enable_thinking=False, preserve_thinking=False,
                               reasoning_effort=pb.REASONING_EFFORT_HIGH)
    assert convert(reasoning=raw).reasoning == chat.ReasoningControls(False, "high", False)
    efforts = {pb.REASONING_EFFORT_LOW: "low", pb.REASONING_EFFORT_MEDIUM: "medium",
               pb.REASONING_EFFORT_UNSPECIFIED: None}
    for effort, expected in efforts.items():
        assert convert(reasoning=pb.ReasoningControls(reasoning_effort=effort)).reasoning.reasoning_effort == expected


def test_count_tokens_takes_the_messages_tools_and_reasoning():
    raw = pb.CountTokensRequest(messages=[pb.Message(role=pb.ROLE_USER, text="hi")], tools=[pb.Tool(name="t")],
                                reasoning=pb.ReasoningControls(enable_thinking=True))
    assert convert_chat.count_request(raw) == chat.GenerateRequest(
        (chat.text_message(chat.Role.USER, "hi"),), tools=(chat.Tool("t"),),
        reasoning=chat.ReasoningControls(enable_thinking=True))


# --- events ----------------------------------------------------------------------------

LP = (chat.TokenLogprob("Hi", -0.25, b"Hi", (chat.TokenAlternative("Hi", -0.25, b"Hi"),
                                             chat.TokenAlternative("\u00e9", -1.5, "é".encode()))),
      chat.TokenLogprob("", -3.0, b"\xf0\x9f"))


def sent(event: chat.GenerateEvent) -> pb.GenerateResponse:
    """The event as a client reads it: through the wire format."""
    return pb.GenerateResponse.FromString(convert_chat.generate_event(event, "req-7").SerializeToString())


def test_text_deltas_carry_the_request_id_and_their_tokens_logprobs():
    deltas = ((chat.ContentDelta("Hi", LP), "content_delta"), (chat.ReasoningDelta("Hi", LP), "reasoning_delta"))
    for event, field in deltas:
        response = sent(event)
        assert (response.WhichOneof("event"), getattr(response, field), response.request_id) == (field, "Hi", "req-7")
        first, split = response.logprobs
        assert (first.token, first.logprob, first.bytes) == ("Hi", -0.25, b"Hi")
        assert [(a.token, a.logprob, a.bytes) for a in first.top_logprobs] == [
            ("Hi", -0.25, b"Hi"), ("é", -1.5, "é".encode())]
        assert (split.token, split.bytes, list(split.top_logprobs)) == ("", b"\xf0\x9f", [])
    assert list(sent(chat.ContentDelta("x")).logprobs) == []


def test_a_tool_call_delta_carries_its_index_id_name_and_arguments_piece():
    response = sent(chat.ToolCallDelta(2, "call_1", "get_weather", '{"ci'))
    assert response.WhichOneof("event") == "tool_call_delta" and response.request_id == "req-7"
    delta = response.tool_call_delta
    assert (delta.index, delta.id, delta.name, delta.arguments_delta) == (2, "call_1", "get_weather", '{"ci')


FINISH = {chat.FinishReason.STOP: pb.FINISH_REASON_STOP, chat.FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
          chat.FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
          chat.FinishReason.CONTEXT_LIMIT: pb.FINISH_REASON_CONTEXT_LIMIT}


@pytest.mark.parametrize("reason", list(chat.FinishReason))
def test_done_carries_the_finish_reason_usage_with_cache_and_timings_with_drafts(reason):
    usage = chat.Usage(32, 3, 35, cached_prompt_tokens=31)
    timings = chat.Timings(1, 7.0, 141.5, 3, 14.0, 142.9, 31, draft_n=12, draft_accepted_n=9)
    response = sent(chat.Done(reason, usage, timings))
    done = response.done
    assert (response.WhichOneof("event"), response.request_id, done.finish_reason) == ("done", "req-7", FINISH[reason])
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens,
            done.usage.cached_prompt_tokens) == (32, 3, 35, 31)
    t = done.timings
    assert (t.prompt_n, t.prompt_ms, t.prompt_per_second, t.predicted_n, t.predicted_ms, t.predicted_per_second,
            t.cache_n, t.draft_n, t.draft_accepted_n) == (1, 7.0, 141.5, 3, 14.0, 142.9, 31, 12, 9)


counts = st.integers(0, 2**32 - 1)


@given(usage=st.builds(chat.Usage, counts, counts, counts, counts),
       timings=st.builds(chat.Timings, counts, st.floats(allow_nan=False), st.floats(allow_nan=False), counts,
                         st.floats(allow_nan=False), st.floats(allow_nan=False), counts, counts, counts))
def test_any_usage_and_timings_the_decoder_can_produce_fit_the_final_event(usage, timings):
    done = sent(chat.Done(chat.FinishReason.STOP, usage, timings)).done
    assert done.usage.cached_prompt_tokens == usage.cached_prompt_tokens
    assert (done.timings.draft_n, done.timings.predicted_ms) == (timings.draft_n, timings.predicted_ms)


def test_an_unknown_reasoning_effort_is_refused_by_its_path():
    with pytest.raises(InvalidArgument) as caught:
        convert(reasoning=pb.ReasoningControls(reasoning_effort=99))
    assert caught.value.field == "reasoning.reasoning_effort"
