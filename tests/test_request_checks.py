"""Checking a chat request (domain/request_checks.py): every bad field is
refused with its path in the request, so a client can point at it."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.capabilities import Capabilities
from llamagate.domain.chat import (
    ChatMessage,
    Dry,
    FormatKind,
    GenerateRequest,
    ImagePart,
    ReasoningControls,
    ResponseFormat,
    Role,
    Sampling,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    text_message,
)
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.generation import chat_call
from llamagate.domain.request_checks import image_mime, validate

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 16
GIF = b"GIF89a" + b"\0" * 16
WEBP = b"RIFF\x24\0\0\0WEBPVP8 " + b"\0" * 16
ALL = Capabilities(tools=True, vision=True)
HI = text_message(Role.USER, "hi")


def request(**sampling) -> GenerateRequest:
    return GenerateRequest((HI,), Sampling(**sampling))


def refused(req: GenerateRequest, caps: Capabilities = ALL, slot_context: int = 0) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate(req, caps, slot_context)
    error = caught.value
    # The path leads the message, so even a client reading only text sees it.
    assert str(error) == f"{error.field}: {error.description}"
    return error


def field_of(req: GenerateRequest, caps: Capabilities = ALL, slot_context: int = 0) -> str:
    return refused(req, caps, slot_context).field


# --- sampling ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.1), ("max_tokens", -1), ("max_tokens", 0), ("top_p", 1.01), ("min_p", -1.0),
     ("presence_penalty", 3.0), ("seed", -2), ("temperature", float("nan")), ("frequency_penalty", -2.5),
     ("frequency_penalty", 2.01), ("repeat_last_n", -2), ("top_logprobs", 21), ("top_logprobs", -1)],
)
def test_out_of_range_sampling_names_the_field(field, value):
    assert field_of(request(**{field: value})) == f"sampling.{field}"


@pytest.mark.parametrize(
    ("field", "value"),
    [("multiplier", -0.1), ("base", 0.99), ("allowed_length", -1), ("penalty_last_n", -2), ("base", math.inf)],
)
def test_out_of_range_dry_names_its_nested_field(field, value):
    assert field_of(request(dry=Dry(**{field: value}))) == f"sampling.dry.{field}"


def test_the_edges_of_each_range_are_accepted():
    validate(request(temperature=0.0, top_p=1.0, min_p=0.0, presence_penalty=-2.0, frequency_penalty=2.0,
                     repeat_last_n=-1, top_logprobs=0, seed=0, max_tokens=1,
                     dry=Dry(multiplier=0.0, base=1.0, allowed_length=0, penalty_last_n=-1)), ALL)
    validate(request(top_logprobs=20, repeat_last_n=0), ALL)


def test_defect_8_a_repetition_penalty_of_zero_is_refused():
    error = refused(request(repetition_penalty=0.0))
    assert (error.field, error.description) == ("sampling.repetition_penalty", "must be > 0.0, got 0.0")
    validate(request(repetition_penalty=1e-6), ALL)


FLOATS = ["temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"]


@pytest.mark.parametrize("field", FLOATS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_defect_17_every_float_field_refuses_nan_and_infinities(field, value):
    assert str(refused(request(**{field: value}))).startswith(f"sampling.{field}: must be a finite number")


def test_max_tokens_above_what_a_slot_holds_is_refused():
    assert field_of(request(max_tokens=2049), slot_context=2048) == "sampling.max_tokens"
    validate(request(max_tokens=2048), ALL, slot_context=2048)
    validate(request(max_tokens=10**6), ALL, slot_context=0)  # 0: the context is not known


def test_logit_bias_needs_real_token_ids_and_finite_biases():
    assert field_of(request(logit_bias=((5, 1.0), (-1, 1.0)))) == "sampling.logit_bias[1].token"
    assert field_of(request(logit_bias=((5, math.nan),))) == "sampling.logit_bias[0].bias"
    validate(request(logit_bias=((0, -100.0), (7, 100.0))), ALL)


def test_an_unknown_reasoning_effort_is_refused():
    req = GenerateRequest((HI,), reasoning=ReasoningControls(reasoning_effort="max"))
    assert field_of(req) == "reasoning.reasoning_effort"


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
maybe = st.none() | finite_or_not
samplings = st.builds(
    Sampling,
    temperature=maybe, top_p=maybe, min_p=maybe, repetition_penalty=maybe, presence_penalty=maybe,
    frequency_penalty=maybe,
    dry=st.builds(Dry, multiplier=maybe, base=maybe),
    logit_bias=st.lists(st.tuples(st.integers(-3, 3), finite_or_not), max_size=3).map(tuple),
)


@given(samplings)
def test_any_validated_request_sends_only_finite_numbers(sampling):
    req = GenerateRequest((HI,), sampling)
    try:
        validate(req, ALL)
    except InvalidArgument as error:
        assert error.field.startswith("sampling.")
        return
    s = chat_call(req, ALL, 2048).sampling
    numbers = [s.temperature, s.top_p, s.min_p, s.repetition_penalty, s.presence_penalty, s.frequency_penalty,
               *(b for _, b in s.logit_bias), *(x for x in (s.dry.multiplier, s.dry.base) if x is not None)]
    assert all(math.isfinite(x) for x in numbers)


# Each field's documented range (the proto's comments), as the oracle.
DOCUMENTED = {
    "temperature": (0.0, None), "top_p": (0.0, 1.0), "min_p": (0.0, 1.0), "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0), "max_tokens": (1, None), "seed": (0, None), "repeat_last_n": (-1, None),
    "top_logprobs": (0, 20),
}


@given(field=st.sampled_from(sorted(DOCUMENTED)), value=st.integers(-50, 50) | st.floats(-50, 50))
def test_a_value_is_refused_exactly_when_it_is_outside_its_documented_range(field, value):
    low, high = DOCUMENTED[field]
    if isinstance(low, int):
        value = int(value)
    inside = low <= value and (high is None or value <= high)
    try:
        validate(request(**{field: value}), ALL)
    except InvalidArgument as error:
        assert not inside and error.field == f"sampling.{field}"
        return
    assert inside


# --- messages ------------------------------------------------------------------


def test_no_messages_is_refused():
    assert field_of(GenerateRequest(())) == "messages"


def test_images_need_a_vision_model_and_never_come_from_the_assistant():
    look = GenerateRequest((HI, ChatMessage(Role.USER, (TextPart("look"), ImagePart(PNG)))))
    error = refused(look, Capabilities())
    assert error.field == "messages[1].parts[1].image" and "mmproj_path" in error.description
    validate(look, Capabilities(vision=True))
    drawn = GenerateRequest((ChatMessage(Role.ASSISTANT, (ImagePart(PNG),)),))
    assert field_of(drawn) == "messages[0].parts[0].image"


def test_image_bytes_must_be_an_image_of_the_type_it_says():
    not_image = GenerateRequest((ChatMessage(Role.USER, (TextPart("x"), ImagePart(b"GIF"))),))
    assert field_of(not_image) == "messages[0].parts[1].image.data"
    mislabelled = GenerateRequest((ChatMessage(Role.USER, (ImagePart(PNG, "image/jpeg"),)),))
    error = refused(mislabelled)
    assert error.field == "messages[0].parts[0].image.mime_type" and "image/png" in error.description
    for data, mime in ((PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp")):
        validate(GenerateRequest((ChatMessage(Role.USER, (ImagePart(data, mime), ImagePart(data))),)), ALL)


def test_the_image_type_is_read_from_the_bytes():
    assert [image_mime(d) for d in (PNG, JPEG, GIF, WEBP)] == ["image/png", "image/jpeg", "image/gif", "image/webp"]
    assert image_mime(b"RIFF\x24\0\0\0WAVEfmt ") is None  # a RIFF file that is sound, not WebP
    assert image_mime(b"") is None and image_mime(b"<svg") is None


def test_only_assistants_carry_reasoning_and_tool_calls():
    call = (ToolCall("c1", "f", "{}"),)
    assert field_of(GenerateRequest((ChatMessage(Role.USER, (), tool_calls=call),))) == "messages[0].tool_calls"
    assert field_of(GenerateRequest((ChatMessage(Role.SYSTEM, (), reasoning="hmm"),))) == "messages[0].reasoning"
    validate(GenerateRequest((HI, ChatMessage(Role.ASSISTANT, (), reasoning="hmm", tool_calls=call))), ALL)


@pytest.mark.parametrize(
    ("call", "field"),
    [(ToolCall("c1", "", "{}"), "messages[1].tool_calls[0].name"),
     (ToolCall("c1", "f", "{not json"), "messages[1].tool_calls[0].arguments"),
     (ToolCall("c1", "f", "[1, 2]"), "messages[1].tool_calls[0].arguments"),
     (ToolCall("c1", "f", ""), "messages[1].tool_calls[0].arguments")],
)
def test_an_earlier_tool_call_needs_a_name_and_an_arguments_object(call, field):
    assert field_of(GenerateRequest((HI, ChatMessage(Role.ASSISTANT, (), tool_calls=(call,))))) == field


def answer(call_id: str) -> ChatMessage:
    return ChatMessage(Role.TOOL, (TextPart("sunny"),), tool_call_id=call_id)


ASKED = ChatMessage(Role.ASSISTANT, (), tool_calls=(ToolCall("call_1", "weather", '{"city": "Paris"}'),))


def test_a_tool_message_answers_an_earlier_call_by_its_id():
    validate(GenerateRequest((HI, ASKED, answer("call_1"))), ALL)
    assert field_of(GenerateRequest((HI, ASKED, answer("")))) == "messages[2].tool_call_id"
    assert field_of(GenerateRequest((HI, ASKED, answer("call_2")))) == "messages[2].tool_call_id"
    # A call made after the answer does not count.
    assert field_of(GenerateRequest((HI, answer("call_1"), ASKED))) == "messages[1].tool_call_id"


def test_only_tool_messages_carry_a_tool_call_id():
    assert field_of(GenerateRequest((ChatMessage(Role.USER, (TextPart("x"),), tool_call_id="c"),))) == (
        "messages[0].tool_call_id")


# --- tools ---------------------------------------------------------------------

WEATHER = Tool("get_weather", "Weather in a city", '{"type": "object", "properties": {"city": {"type": "string"}}}')


AUTO = ToolChoice()


def with_tools(*tools: Tool, choice: ToolChoice = AUTO, **extra) -> GenerateRequest:
    return GenerateRequest((HI,), tools=tools, tool_choice=choice, **extra)


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "dot.ted", "ünï"])
def test_a_tool_name_outside_the_openai_alphabet_is_refused(name):
    assert field_of(with_tools(WEATHER, Tool(name))) == "tools[1].name"


@given(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True))
def test_any_tool_name_of_the_openai_alphabet_passes(name):
    validate(with_tools(Tool(name), choice=ToolChoice(ToolChoiceMode.REQUIRED, name)), ALL)


@given(st.text(max_size=70))
def test_a_name_passes_exactly_when_it_matches_the_documented_pattern(name):
    matches = re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name, flags=re.ASCII) is not None
    try:
        validate(with_tools(Tool(name)), ALL)
    except InvalidArgument as error:
        assert not matches and error.field == "tools[0].name"
        return
    assert matches


def test_tool_parameters_must_be_a_json_schema_object():
    assert field_of(with_tools(Tool("f", parameters="{"))) == "tools[0].parameters"
    assert field_of(with_tools(Tool("f", parameters='"string"'))) == "tools[0].parameters"
    validate(with_tools(Tool("f"), Tool("g", parameters="{}")), ALL)  # empty: no arguments


def test_a_tool_name_used_twice_is_refused_at_the_second():
    assert field_of(with_tools(WEATHER, Tool("other"), Tool("get_weather"))) == "tools[2].name"


def test_tools_need_a_template_that_supports_them():
    error = refused(with_tools(WEATHER), Capabilities())
    assert error.field == "tools" and "chat_template" in error.description


def test_the_tool_choice_must_be_possible():
    assert field_of(with_tools(WEATHER, choice=ToolChoice(ToolChoiceMode.REQUIRED, "nope"))) == "tool_choice.name"
    assert field_of(with_tools(choice=ToolChoice(ToolChoiceMode.REQUIRED))) == "tool_choice.mode"
    validate(with_tools(WEATHER, choice=ToolChoice(ToolChoiceMode.REQUIRED, "get_weather")), ALL)
    validate(with_tools(choice=ToolChoice(ToolChoiceMode.NONE)), ALL)


# --- structured output -----------------------------------------------------------


def formatted(kind: FormatKind, text: str = "", *tools: Tool, choice: ToolChoice = AUTO) -> GenerateRequest:
    return with_tools(*tools, choice=choice, response_format=ResponseFormat(kind, text))


def test_a_json_schema_must_be_a_json_object():
    assert field_of(formatted(FormatKind.JSON_SCHEMA, "{")) == "response_format.json_schema"
    assert field_of(formatted(FormatKind.JSON_SCHEMA, "[]")) == "response_format.json_schema"
    validate(formatted(FormatKind.JSON_SCHEMA, '{"type": "object"}'), ALL)
    validate(formatted(FormatKind.JSON_OBJECT), ALL)


def test_a_grammar_must_be_there_and_cannot_share_the_reply_with_tool_calls():
    assert field_of(formatted(FormatKind.GRAMMAR, "  \n")) == "response_format.grammar"
    assert field_of(formatted(FormatKind.GRAMMAR, 'root ::= "x"', WEATHER)) == "response_format.grammar"
    validate(formatted(FormatKind.GRAMMAR, 'root ::= "x"', WEATHER, choice=ToolChoice(ToolChoiceMode.NONE)), ALL)
    validate(formatted(FormatKind.GRAMMAR, 'root ::= "x"'), ALL)


# --- the error's shape --------------------------------------------------------------

BAD = [
    GenerateRequest(()),
    request(top_p=2.0),
    request(dry=Dry(base=0.0)),
    with_tools(Tool("bad name")),
    GenerateRequest((answer("x"),)),
    formatted(FormatKind.JSON_SCHEMA, "nope"),
]


@given(st.sampled_from(BAD), st.sampled_from([ALL, replace(ALL, vision=False)]))
def test_every_refusal_names_a_field_and_leads_its_message_with_it(req, caps):
    error = refused(req, caps)
    assert error.field and error.description and error.reason == "INVALID_ARGUMENT"


def test_log_probabilities_cannot_stream_beside_tool_calls():
    # llama-server refuses logprobs with tools on a stream; say so by field instead.
    asked = replace(with_tools(WEATHER), sampling=Sampling(top_logprobs=2))
    assert field_of(asked) == "sampling.top_logprobs"
    validate(replace(asked, tool_choice=ToolChoice(ToolChoiceMode.NONE)), ALL)  # no tools are sent then


def test_inputs_llama_server_compiles_before_the_first_token_are_bounded():
    from llamagate.domain.request_checks import MAX_SCHEMA_BYTES, MAX_SEQUENCE_BREAKERS

    many = Sampling(dry=Dry(multiplier=1.0, sequence_breakers=tuple(f"x{i}" for i in range(MAX_SEQUENCE_BREAKERS + 1))))
    with pytest.raises(InvalidArgument) as caught:
        validate(GenerateRequest((text_message(Role.USER, "hi"),), many), Capabilities())
    assert caught.value.field == "sampling.dry.sequence_breakers"
    enum = json.dumps({"enum": ["v" * 20] * (MAX_SCHEMA_BYTES // 20)})
    huge = GenerateRequest((text_message(Role.USER, "hi"),), response_format=ResponseFormat(FormatKind.JSON_SCHEMA, enum))
    with pytest.raises(InvalidArgument) as caught:
        validate(huge, Capabilities())
    assert caught.value.field == "response_format.json_schema"


def test_an_empty_stop_string_is_refused():
    with pytest.raises(InvalidArgument) as caught:
        validate(GenerateRequest((text_message(Role.USER, "hi"),), Sampling(stop=("",))), Capabilities())
    assert caught.value.field == "sampling.stop"


def test_a_messages_calls_have_tool_names_and_ids_of_their_own():
    def with_calls(*calls: ToolCall) -> GenerateRequest:
        return GenerateRequest((text_message(Role.USER, "hi"), ChatMessage(Role.ASSISTANT, tool_calls=calls)))

    for calls, field in [((ToolCall("a", "f", "{}"), ToolCall("a", "g", "{}")), "messages[1].tool_calls[1].id"),
                         ((ToolCall("a", "a b\n<|im_end|>", "{}"),), "messages[1].tool_calls[0].name")]:
        with pytest.raises(InvalidArgument) as caught:
            validate(with_calls(*calls), Capabilities())
        assert caught.value.field == field
    validate(with_calls(ToolCall("a", "f", "{}"), ToolCall("b", "f", "{}")), Capabilities())


def test_a_mime_type_is_read_without_regard_to_case():
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 8
    message = ChatMessage(Role.USER, (ImagePart(png, "IMAGE/PNG"),))
    validate(GenerateRequest((message,)), Capabilities(vision=True))


def test_server_tools_take_no_logprobs_and_no_blank_grammar():
    from llamagate.domain.chat import ServerTools
    from llamagate.domain.request_checks import check_server_tools

    base = GenerateRequest((text_message(Role.USER, "hi"),), server_tools=ServerTools(("python",)))
    with pytest.raises(InvalidArgument) as caught:
        check_server_tools(replace(base, sampling=Sampling(top_logprobs=2)), frozenset({"python"}))
    assert caught.value.field == "sampling.top_logprobs"
    with pytest.raises(InvalidArgument) as caught:
        validate(replace(base, server_tools=ServerTools(("python",), tool_turn_grammar="  \n")), Capabilities())
    assert caught.value.field == "server_tools.tool_turn_grammar"


def test_what_the_engine_refuses_is_named_by_field_where_its_words_tell():
    from llamagate.domain.chat import ResponseFormat
    from llamagate.domain.errors import EngineRejected
    from llamagate.domain.request_checks import rejected_field

    hi = (text_message(Role.USER, "hi"),)
    grammar = GenerateRequest(hi, response_format=ResponseFormat(FormatKind.GRAMMAR, "root ::= ("))
    named = rejected_field(EngineRejected("llama-server rejected the request: failed to parse grammar"), grammar)
    assert isinstance(named, InvalidArgument) and named.field == "response_format.grammar"
    other = EngineRejected("llama-server rejected the request: something else")
    assert rejected_field(other, grammar) is other
    plain = EngineRejected("failed to parse grammar")  # no grammar was sent: the words prove nothing
    assert rejected_field(plain, GenerateRequest(hi)) is plain
