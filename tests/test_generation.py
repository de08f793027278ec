"""Request validation, request shaping (SPEC §12) and folding the stream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.chat import (
    ChatChunk,
    ChatMessage,
    ContentDelta,
    Done,
    FinishReason,
    GenerateRequest,
    ReasoningControls,
    ReasoningDelta,
    Role,
    Sampling,
    Usage,
)
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.generation import StreamFolder, chat_body, validate
from llamagate.domain.model import Capabilities, ReasoningStyle

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
    body = chat_body(request(temperature=0.0), Capabilities(), context_length=2048)
    assert body["temperature"] == 0.0
    assert (body["top_p"], body["top_k"], body["min_p"], body["repeat_penalty"]) == (0.95, 20, 0.01, 1.0)
    assert body["max_tokens"] == 2048  # callers that omit it are not cut short
    assert body["t_max_predict_ms"] == 600_000
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "chat_template_kwargs" not in body and "seed" not in body


def test_negative_top_k_means_disabled():
    assert chat_body(request(top_k=-3), Capabilities(), 0)["top_k"] == 0
    assert chat_body(request(), Capabilities(), 0)["max_tokens"] == 32768


def test_image_travels_as_a_data_url_part_next_to_the_text():
    body = chat_body(GenerateRequest((ChatMessage(Role.USER, "what is it", PNG),)), Capabilities(vision=True), 0)
    parts = body["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "what is it"}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")


def test_reasoning_controls_become_template_kwargs():
    caps = Capabilities(reasoning=True, reasoning_style=ReasoningStyle.ENABLE_THINKING)
    req = GenerateRequest((ChatMessage(Role.USER, "hi"),), reasoning=ReasoningControls(enable_thinking=False))
    assert chat_body(req, caps, 0)["chat_template_kwargs"] == {"enable_thinking": False}


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
    folder.feed(ChatChunk(finish_reason="length"))
    folder.feed(ChatChunk(usage=Usage(5, 7, 12)))
    done = folder.finish()[-1]
    assert done.finish_reason is FinishReason.LENGTH and done.usage == Usage(5, 7, 12)
