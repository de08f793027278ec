"""Validating a chat request, shaping it for llama-server, folding the stream.

Defaults and the always-on wall-clock backstop are SPEC §12's.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from llamagate.domain.capabilities import request_template_kwargs
from llamagate.domain.chat import (
    ChatChunk,
    ContentDelta,
    Done,
    FinishReason,
    GenerateEvent,
    GenerateRequest,
    ReasoningDelta,
    Role,
    Timings,
    Usage,
)
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.model import Capabilities

DEFAULTS = {
    "temperature": 0.6,
    "top_p": 0.95,
    "top_k": 20,
    "min_p": 0.01,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
}
MAX_TOKENS_WITHOUT_CONTEXT = 32768
WALL_CLOCK_BACKSTOP_MS = 600_000

_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)


def validate(request: GenerateRequest, caps: Capabilities) -> None:
    """Raise InvalidArgument naming the first bad field."""
    if not request.messages:
        raise InvalidArgument("messages is empty: send at least one message")
    for i, message in enumerate(request.messages):
        if message.image and not caps.vision:
            raise InvalidArgument(f"messages[{i}].image: the loaded model has no vision projector")
        if message.image and _image_mime(message.image) is None:
            raise InvalidArgument(f"messages[{i}].image: not a PNG, JPEG, GIF or WebP image")
    s = request.sampling
    _check(s.temperature, "temperature", low=0.0)
    _check(s.top_p, "top_p", low=0.0, high=1.0)
    _check(s.min_p, "min_p", low=0.0, high=1.0)
    _check(s.repetition_penalty, "repetition_penalty", low=0.0)
    _check(s.presence_penalty, "presence_penalty", low=-2.0, high=2.0)
    _check(s.max_tokens, "max_tokens", low=1)
    _check(s.seed, "seed", low=0)
    effort = request.reasoning.reasoning_effort
    if effort not in (None, "low", "medium", "high"):
        raise InvalidArgument(f"reasoning_effort must be low, medium or high, got {effort!r}")


def _check(value: float | None, name: str, *, low: float, high: float | None = None) -> None:
    if value is None:
        return
    if value != value:  # NaN
        raise InvalidArgument(f"sampling.{name} is NaN")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise InvalidArgument(f"sampling.{name} must be {bound}, got {value}")


def chat_body(request: GenerateRequest, caps: Capabilities, context_length: int) -> dict[str, object]:
    """The JSON body for llama-server's ``/v1/chat/completions`` (streaming)."""
    s = request.sampling
    body: dict[str, object] = {
        "messages": [_message_json(m) for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": _or(s.temperature, DEFAULTS["temperature"]),
        "top_p": _or(s.top_p, DEFAULTS["top_p"]),
        "top_k": max(0, _or(s.top_k, DEFAULTS["top_k"])),
        "min_p": _or(s.min_p, DEFAULTS["min_p"]),
        "repeat_penalty": _or(s.repetition_penalty, DEFAULTS["repeat_penalty"]),
        "presence_penalty": _or(s.presence_penalty, DEFAULTS["presence_penalty"]),
        # Callers that omit max_tokens must not be cut short.
        "max_tokens": s.max_tokens or context_length or MAX_TOKENS_WITHOUT_CONTEXT,
        "t_max_predict_ms": WALL_CLOCK_BACKSTOP_MS,
    }
    if s.stop:
        body["stop"] = list(s.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    r = request.reasoning
    kwargs = request_template_kwargs(
        caps,
        enable_thinking=r.enable_thinking,
        reasoning_effort=r.reasoning_effort,
        preserve_thinking=r.preserve_thinking,
    )
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    return body


def _or(value, default):
    return default if value is None else value


def _message_json(message) -> dict[str, object]:
    if not message.image:
        return {"role": message.role.value, "content": message.text}
    url = f"data:{_image_mime(message.image)};base64,{base64.b64encode(message.image).decode()}"
    parts = [{"type": "text", "text": message.text}, {"type": "image_url", "image_url": {"url": url}}]
    return {"role": message.role.value, "content": parts}


def _image_mime(data: bytes) -> str | None:
    return next((mime for magic, mime in _IMAGE_MAGIC if data.startswith(magic)), None)


@dataclass
class StreamFolder:
    """Turns engine chunks into deltas and one final Done event.

    Keeps the last usage and timings seen (llama-server sends them late). A
    reply that reasoned but never produced content gets its reasoning as the
    content, so a client that shows only content still sees an answer.
    """

    reasoning: list[str] = field(default_factory=list)
    saw_content: bool = False
    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)

    def feed(self, chunk: ChatChunk) -> list[GenerateEvent]:
        events: list[GenerateEvent] = []
        if chunk.reasoning:
            self.reasoning.append(chunk.reasoning)
            events.append(ReasoningDelta(chunk.reasoning))
        if chunk.content:
            self.saw_content = True
            events.append(ContentDelta(chunk.content))
        if chunk.finish_reason:
            self.finish_reason = _finish_reason(chunk.finish_reason)
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.timings is not None:
            self.timings = chunk.timings
        return events

    def finish(self) -> list[GenerateEvent]:
        events: list[GenerateEvent] = []
        if self.reasoning and not self.saw_content:
            events.append(ContentDelta("".join(self.reasoning)))
        events.append(Done(self.finish_reason, self.usage, self.timings))
        return events


def _finish_reason(raw: str) -> FinishReason:
    try:
        return FinishReason(raw)
    except ValueError:
        return FinishReason.STOP
