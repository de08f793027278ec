"""Request shaping (SPEC §12): chat_call, and folding the stream (StreamFolder).

Validation is ``domain/request_checks.py``'s (tests/test_request_checks.py).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.capabilities import Capabilities, ReasoningStyle
from llamagate.domain.chat import (
    ChatChunk,
    ChatMessage,
    ContentDelta,
    Done,
    Dry,
    FinishReason,
    FormatKind,
    GenerateRequest,
    Image,
    ImagePart,
    ReasoningControls,
    ReasoningDelta,
    ResolvedSampling,
    ResponseFormat,
    Role,
    Sampling,
    TextPart,
    TokenAlternative,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    Usage,
    text_message,
)
from llamagate.domain.generation import StreamFolder, chat_call

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 16


def request(**sampling) -> GenerateRequest:
    return GenerateRequest((text_message(Role.USER, "hi"),), Sampling(**sampling))


def test_defaults_fill_unset_sampling_and_zero_temperature_is_kept():
    call = chat_call(request(temperature=0.0), Capabilities(), context_length=2048)
    assert call.sampling == ResolvedSampling(temperature=0.0, top_p=0.95, top_k=20, min_p=0.01,
                                             repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                                             repeat_last_n=64, seed=None, dry=Dry(), logit_bias=(),
                                             top_logprobs=None)
    assert call.max_tokens == 2048  # callers that omit it are not cut short
    assert call.wall_clock_limit_ms == 600_000
    assert call.template_kwargs == {} and call.stop == ()
    assert (call.tools, call.tool_choice, call.parallel_tool_calls) == ((), ToolChoiceMode.AUTO, None)
    assert call.response_format == ResponseFormat()


def test_the_new_samplers_pass_through_as_set():
    dry = Dry(multiplier=0.8, base=1.75, allowed_length=2, penalty_last_n=-1, sequence_breakers=("\n",))
    call = chat_call(request(frequency_penalty=0.5, repeat_last_n=0, dry=dry, logit_bias=((15, -100.0),),
                             top_logprobs=0, seed=3), Capabilities(), 0)
    s = call.sampling
    assert (s.frequency_penalty, s.repeat_last_n, s.dry, s.logit_bias, s.top_logprobs, s.seed) == (
        0.5, 0, dry, ((15, -100.0),), 0, 3)


def test_negative_top_k_means_disabled():
    assert chat_call(request(top_k=-3), Capabilities(), 0).sampling.top_k == 0
    assert chat_call(request(), Capabilities(), 0).max_tokens == 32768


def test_images_travel_in_order_between_the_text_parts_with_their_mime_type():
    parts = (TextPart("compare"), ImagePart(PNG), TextPart("with"), ImagePart(JPEG, "image/jpeg"))
    call = chat_call(GenerateRequest((ChatMessage(Role.USER, parts),)), Capabilities(vision=True), 0)
    [message] = call.messages
    assert message.parts == (TextPart("compare"), Image("image/png", PNG), TextPart("with"), Image("image/jpeg", JPEG))
    assert message.text == "comparewith"


def test_reasoning_controls_become_template_kwargs():
    caps = Capabilities(reasoning=True, reasoning_style=ReasoningStyle.ENABLE_THINKING)
    req = GenerateRequest((text_message(Role.USER, "hi"),), reasoning=ReasoningControls(enable_thinking=False))
    assert chat_call(req, caps, 0).template_kwargs == {"enable_thinking": False}


texts = st.text(max_size=30)


@given(content=st.lists(texts, max_size=8), reasoning=st.lists(texts, max_size=8))
def test_deltas_concatenate_to_the_streamed_text_and_end_with_one_done(content, reasoning):
    folder = StreamFolder()
    events = []
    for r, c in zip(reasoning + [""] * len(content), content + [""] * len(reasoning)):
        events += folder.feed(ChatChunk(reasoning=r, content=c))
    events += folder.finish()

    shown = "".join(e.text for e in events if isinstance(e, ContentDelta))
    thought = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert thought == "".join(reasoning)
    # Reasoning with no content at all is delivered as the content.
    assert shown == ("".join(content) if any(content) else "".join(reasoning))
    assert isinstance(events[-1], Done) and not any(isinstance(e, Done) for e in events[:-1])
    assert all(e.text for e in events[:-1])  # deltas, never empty


def test_last_usage_and_finish_reason_win():
    folder = StreamFolder()
    folder.feed(ChatChunk(content="a", usage=Usage(1, 1, 2)))
    folder.feed(ChatChunk(finish_reason=FinishReason.LENGTH))
    folder.feed(ChatChunk(usage=Usage(5, 7, 12)))
    done = folder.finish()[-1]
    assert done.finish_reason is FinishReason.LENGTH and done.usage == Usage(5, 7, 12)


# --- tools and history (issue 9) ---------------------------------------------

TOOLS = (Tool("get_weather", "Weather in a city", '{"type": "object"}'), Tool("get_time"))


def with_tools(choice: ToolChoice, **extra) -> GenerateRequest:
    return GenerateRequest((text_message(Role.USER, "weather?"),), tools=TOOLS, tool_choice=choice, **extra)


def test_a_named_tool_choice_offers_only_that_tool_and_requires_a_call():
    call = chat_call(with_tools(ToolChoice(ToolChoiceMode.AUTO, "get_time")), Capabilities(tools=True), 0)
    assert (call.tools, call.tool_choice) == ((Tool("get_time"),), ToolChoiceMode.REQUIRED)


def test_tool_choice_none_offers_no_tools_at_all():
    call = chat_call(with_tools(ToolChoice(ToolChoiceMode.NONE)), Capabilities(tools=True), 0)
    assert (call.tools, call.tool_choice) == ((), ToolChoiceMode.NONE)


def test_auto_and_required_offer_every_tool_with_the_flags_as_asked():
    fmt = ResponseFormat(FormatKind.JSON_OBJECT)
    for mode in (ToolChoiceMode.AUTO, ToolChoiceMode.REQUIRED):
        req = with_tools(ToolChoice(mode), parallel_tool_calls=False, response_format=fmt)
        call = chat_call(req, Capabilities(tools=True), 0)
        assert (call.tools, call.tool_choice, call.parallel_tool_calls, call.response_format) == (
            TOOLS, mode, False, fmt)


HISTORY = (
    text_message(Role.USER, "weather in Paris?"),
    ChatMessage(Role.ASSISTANT, (), reasoning="I should call the tool",
                tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
    ChatMessage(Role.TOOL, (TextPart("sunny"),), tool_call_id="call_1"),
)


def test_earlier_reasoning_goes_back_only_where_the_template_keeps_it():
    kept = chat_call(GenerateRequest(HISTORY), Capabilities(preserve_thinking=True, tools=True), 0)
    dropped = chat_call(GenerateRequest(HISTORY), Capabilities(tools=True), 0)
    assert kept.messages[1].reasoning == "I should call the tool"
    assert dropped.messages[1].reasoning == ""
    for call in (kept, dropped):  # the calls and the answers to them always go back
        assert call.messages[1].tool_calls == HISTORY[1].tool_calls
        assert (call.messages[2].tool_call_id, call.messages[2].text) == ("call_1", "sunny")
        assert [m.role for m in call.messages] == [Role.USER, Role.ASSISTANT, Role.TOOL]


# --- the stream's new rules (issue 9) ----------------------------------------

LP = (TokenLogprob("Hi", -0.1, b"Hi", (TokenAlternative("Hello", -2.0, b"Hello"),)),)


def fold(*chunks: ChatChunk, max_tokens: int = 0) -> list:
    folder = StreamFolder(max_tokens=max_tokens)
    return [e for c in chunks for e in folder.feed(c)] + folder.finish()


def test_tool_call_pieces_pass_through_by_index_and_reasoning_is_not_made_the_answer():
    events = fold(
        ChatChunk(reasoning="need the weather"),
        ChatChunk(tool_calls=(ToolCallDelta(0, "call_1", "get_weather", '{"ci'),)),
        ChatChunk(tool_calls=(ToolCallDelta(0, arguments='ty": "Paris"}'), ToolCallDelta(1, "call_2", "x"))),
        ChatChunk(finish_reason=FinishReason.TOOL_CALLS),
    )
    assert events[:-1] == [
        ReasoningDelta("need the weather"),
        ToolCallDelta(0, "call_1", "get_weather", '{"ci'),
        ToolCallDelta(0, "", "", 'ty": "Paris"}'),
        ToolCallDelta(1, "call_2", "x", ""),
    ]
    assert events[-1].finish_reason is FinishReason.TOOL_CALLS


def test_a_reply_that_only_reasons_gets_its_reasoning_as_the_answer():
    events = fold(ChatChunk(reasoning="a"), ChatChunk(reasoning="b"), ChatChunk(finish_reason=FinishReason.STOP))
    assert events[:-1] == [ReasoningDelta("a"), ReasoningDelta("b"), ContentDelta("ab")]


def test_logprobs_go_with_the_first_delta_of_their_chunk_only():
    both = fold(ChatChunk(reasoning="r", content="Hi", logprobs=LP))
    assert both[:2] == [ReasoningDelta("r", LP), ContentDelta("Hi")]
    assert fold(ChatChunk(content="Hi", logprobs=LP))[0] == ContentDelta("Hi", LP)
    # Tool-call markup carries none: its tokens are not the reply's text.
    call_only = fold(ChatChunk(tool_calls=(ToolCallDelta(0, "c", "f"),), logprobs=LP))
    assert call_only[0] == ToolCallDelta(0, "c", "f") and not any(getattr(e, "logprobs", ()) for e in call_only)


def test_a_length_stop_before_max_tokens_is_the_context_filling_up():
    def ended(made: int, max_tokens: int) -> FinishReason:
        done = fold(ChatChunk(content="x", finish_reason=FinishReason.LENGTH, usage=Usage(5, made, 5 + made)),
                    max_tokens=max_tokens)[-1]
        return done.finish_reason

    assert ended(10, 64) is FinishReason.CONTEXT_LIMIT
    assert ended(64, 64) is FinishReason.LENGTH


fragments = st.builds(ToolCallDelta, st.integers(0, 3), st.text(max_size=4), st.text(max_size=4),
                      st.text(max_size=8))
chunks = st.builds(ChatChunk, reasoning=texts, content=texts, tool_calls=st.lists(fragments, max_size=2).map(tuple),
                   logprobs=st.sampled_from([(), LP]))


@given(st.lists(chunks, max_size=8))
def test_every_piece_comes_out_once_in_order_and_reasoning_stands_in_only_for_a_silent_reply(stream):
    events = fold(*stream)

    assert isinstance(events[-1], Done) and not any(isinstance(e, Done) for e in events[:-1])
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls == [ToolCallDelta(f.index, f.id, f.name, f.arguments) for c in stream for f in c.tool_calls]
    reasoning = "".join(c.reasoning for c in stream)
    content = "".join(c.content for c in stream)
    stand_in = bool(reasoning) and not content and not calls
    shown = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert shown == (reasoning if stand_in else content)
    # A chunk's logprobs appear once when it had text to carry them, else never.
    carried = [e.logprobs for e in events if isinstance(e, ContentDelta | ReasoningDelta) and e.logprobs]
    assert carried == [c.logprobs for c in stream if c.logprobs and (c.reasoning or c.content)]


def test_minus_one_means_the_whole_slot_for_the_repetition_windows():
    from llamagate.domain.chat import Dry

    request = GenerateRequest((text_message(Role.USER, "hi"),),
                              Sampling(repeat_last_n=-1, dry=Dry(multiplier=0.8, penalty_last_n=-1)))
    sampling = chat_call(request, Capabilities(), 1024).sampling
    assert (sampling.repeat_last_n, sampling.dry.penalty_last_n) == (1024, 1024)
    assert chat_call(GenerateRequest((text_message(Role.USER, "hi"),), Sampling(repeat_last_n=0)),
                     Capabilities(), 1024).sampling.repeat_last_n == 0
