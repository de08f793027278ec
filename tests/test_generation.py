"""Request validation, request shaping (SPEC §12) and folding the stream."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.capabilities import Capabilities, ReasoningStyle
from llamagate.domain.chat import (
    ChatChunk,
    ChatMessage,
    ContentDelta,
    Done,
    FinishReason,
    GenerateRequest,
    Image,
    ReasoningControls,
    ReasoningDelta,
    ResolvedSampling,
    Role,
    Sampling,
    Usage,
)
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.generation import StreamFolder, chat_call, validate

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def request(**sampling) -> GenerateRequest:
    return GenerateRequest((ChatMessage(Role.USER, "hi"),), Sampling(**sampling))


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.1), ("max_tokens", -1), ("max_tokens", 0), ("top_p", 1.01), ("min_p", -1.0),
     ("presence_penalty", 3.0), ("seed", -2), ("temperature", float("nan"))],
)
def test_out_of_range_sampling_names_the_field(field, value):
    with pytest.raises(InvalidArgument, match=field):
        validate(request(**{field: value}), Capabilities())


def test_defect_8_a_repetition_penalty_of_zero_is_refused():
    with pytest.raises(InvalidArgument, match="repetition_penalty must be > 0"):
        validate(request(repetition_penalty=0.0), Capabilities())
    validate(request(repetition_penalty=1e-6), Capabilities())


FLOATS = ["temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty"]


@pytest.mark.parametrize("field", FLOATS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_defect_17_every_float_field_refuses_nan_and_infinities(field, value):
    with pytest.raises(InvalidArgument, match=f"sampling.{field} must be a finite number"):
        validate(request(**{field: value}), Capabilities())


@given(field=st.sampled_from(FLOATS), value=st.floats(allow_nan=True, allow_infinity=True))
def test_a_validated_float_is_always_finite_in_the_call(field, value):
    try:
        validate(request(**{field: value}), Capabilities())
    except InvalidArgument:
        return
    call = chat_call(request(**{field: value}), Capabilities(), 2048)
    assert math.isfinite(getattr(call.sampling, field))


def test_empty_messages_and_images_without_vision_are_rejected():
    with pytest.raises(InvalidArgument, match="messages"):
        validate(GenerateRequest(()), Capabilities())
    with_image = GenerateRequest((ChatMessage(Role.USER, "look", PNG),))
    with pytest.raises(InvalidArgument, match="vision"):
        validate(with_image, Capabilities())
    validate(with_image, Capabilities(vision=True))
    with pytest.raises(InvalidArgument, match="PNG"):
        validate(GenerateRequest((ChatMessage(Role.USER, "x", b"GIF"),)), Capabilities(vision=True))


def test_defaults_fill_unset_sampling_and_zero_temperature_is_kept():
    call = chat_call(request(temperature=0.0), Capabilities(), context_length=2048)
    assert call.sampling == ResolvedSampling(temperature=0.0, top_p=0.95, top_k=20, min_p=0.01,
                                             repetition_penalty=1.0, presence_penalty=0.0, seed=None)
    assert call.max_tokens == 2048  # callers that omit it are not cut short
    assert call.wall_clock_limit_ms == 600_000
    assert call.template_kwargs == {} and call.stop == ()


def test_negative_top_k_means_disabled():
    assert chat_call(request(top_k=-3), Capabilities(), 0).sampling.top_k == 0
    assert chat_call(request(), Capabilities(), 0).max_tokens == 32768


def test_an_image_travels_with_its_mime_type_next_to_the_text():
    call = chat_call(GenerateRequest((ChatMessage(Role.USER, "what is it", PNG),)), Capabilities(vision=True), 0)
    message = call.messages[0]
    assert (message.text, message.images) == ("what is it", (Image("image/png", PNG),))


def test_reasoning_controls_become_template_kwargs():
    caps = Capabilities(reasoning=True, reasoning_style=ReasoningStyle.ENABLE_THINKING)
    req = GenerateRequest((ChatMessage(Role.USER, "hi"),), reasoning=ReasoningControls(enable_thinking=False))
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
