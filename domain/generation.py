"""Validating a chat request, shaping it into a ChatCall, folding the stream.

Defaults and the always-on wall-clock backstop are SPEC §12's. Nothing here
knows how an engine spells a request: ``adapters/llama_http`` turns the
ChatCall into llama-server's JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from llamagate.domain.batching import PromptStep, step_speed
from llamagate.domain.capabilities import Capabilities, request_template_kwargs
from llamagate.domain.chat import (
    CallMessage,
    ChatCall,
    ChatChunk,
    ChatMessage,
    ContentDelta,
    Done,
    FinishReason,
    GenerateEvent,
    GenerateRequest,
    Image,
    Range,
    ReasoningDelta,
    ResolvedSampling,
    Sampling,
    Timings,
    Usage,
)
from llamagate.domain.errors import InvalidArgument

DEFAULT_SAMPLING = ResolvedSampling(
    temperature=0.6,
    top_p=0.95,
    top_k=20,
    min_p=0.01,
    repetition_penalty=1.0,
    presence_penalty=0.0,
)
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
        if message.image and image_mime(message.image) is None:
            raise InvalidArgument(f"messages[{i}].image: not a PNG, JPEG, GIF or WebP image")
    for f in fields(Sampling):
        if "range" in f.metadata:
            _check(getattr(request.sampling, f.name), f.name, f.metadata["range"])
    effort = request.reasoning.reasoning_effort
    if effort not in (None, "low", "medium", "high"):
        raise InvalidArgument(f"reasoning_effort must be low, medium or high, got {effort!r}")


def _check(value: float | None, name: str, valid: Range) -> None:
    if value is None:
        return
    if not math.isfinite(value):  # NaN and ±inf have no meaning here (nor any JSON spelling)
        raise InvalidArgument(f"sampling.{name} must be a finite number, got {value}")
    too_low = value <= valid.low if valid.above else value < valid.low
    if too_low or (valid.high is not None and value > valid.high):
        lower = f"> {valid.low}" if valid.above else f">= {valid.low}"
        bound = lower if valid.high is None else f"between {valid.low} and {valid.high}"
        raise InvalidArgument(f"sampling.{name} must be {bound}, got {value}")


def chat_call(request: GenerateRequest, caps: Capabilities, context_length: int) -> ChatCall:
    """The call to make for a validated request (see ``validate``)."""
    r = request.reasoning
    kwargs = request_template_kwargs(
        caps,
        enable_thinking=r.enable_thinking,
        reasoning_effort=r.reasoning_effort,
        preserve_thinking=r.preserve_thinking,
    )
    return ChatCall(
        messages=tuple(_call_message(m) for m in request.messages),
        sampling=resolve_sampling(request.sampling),
        # Callers that omit max_tokens must not be cut short.
        max_tokens=request.sampling.max_tokens or context_length or MAX_TOKENS_WITHOUT_CONTEXT,
        stop=request.sampling.stop,
        template_kwargs=kwargs,
        wall_clock_limit_ms=WALL_CLOCK_BACKSTOP_MS,
    )


def resolve_sampling(s: Sampling) -> ResolvedSampling:
    d = DEFAULT_SAMPLING
    return ResolvedSampling(
        temperature=d.temperature if s.temperature is None else s.temperature,
        top_p=d.top_p if s.top_p is None else s.top_p,
        top_k=max(0, d.top_k if s.top_k is None else s.top_k),  # negative: disabled
        min_p=d.min_p if s.min_p is None else s.min_p,
        repetition_penalty=d.repetition_penalty if s.repetition_penalty is None else s.repetition_penalty,
        presence_penalty=d.presence_penalty if s.presence_penalty is None else s.presence_penalty,
        seed=s.seed,
    )


def _call_message(message: ChatMessage) -> CallMessage:
    mime = image_mime(message.image) if message.image else None
    images = (Image(mime, message.image),) if mime else ()
    return CallMessage(message.role, message.text, images)


def image_mime(data: bytes) -> str | None:
    return next((mime for magic, mime in _IMAGE_MAGIC if data.startswith(magic)), None)


@dataclass
class StreamFolder:
    """Turns engine chunks into deltas and one final Done event.

    Keeps the last usage and timings seen (llama-server sends them late). A
    reply that reasoned but never produced content gets its reasoning as the
    content, so a client that shows only content still sees an answer. A
    length stop before ``max_tokens`` is the context filling up. Prompt
    progress reports yield nothing; they give the slowest prompt speed seen.
    """

    max_tokens: int = 0
    reasoning: list[str] = field(default_factory=list)
    saw_content: bool = False
    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    last_step: PromptStep | None = None
    slowest_prompt_speed: float | None = None  # tokens/s of the slowest decode of the prompt
    slowest_prompt_position: int = 0  # tokens in the slot when that decode ended

    def feed(self, chunk: ChatChunk) -> list[GenerateEvent]:
        events: list[GenerateEvent] = []
        if chunk.reasoning:
            self.reasoning.append(chunk.reasoning)
            events.append(ReasoningDelta(chunk.reasoning))
        if chunk.content:
            self.saw_content = True
            events.append(ContentDelta(chunk.content))
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.timings is not None:
            self.timings = chunk.timings
        if chunk.progress is not None:
            self._prompt_step(chunk.progress)
        return events

    def finish(self) -> list[GenerateEvent]:
        events: list[GenerateEvent] = []
        if self.reasoning and not self.saw_content:
            events.append(ContentDelta("".join(self.reasoning)))
        events.append(Done(self._why_ended(), self.usage, self.timings))
        return events

    def _why_ended(self) -> FinishReason:
        made = self.usage.completion_tokens
        if self.finish_reason is FinishReason.LENGTH and 0 < made < self.max_tokens:
            return FinishReason.CONTEXT_LIMIT
        return self.finish_reason

    def _prompt_step(self, step: PromptStep) -> None:
        speed = step_speed(self.last_step, step) if self.last_step is not None else None
        if speed is not None and (self.slowest_prompt_speed is None or speed < self.slowest_prompt_speed):
            self.slowest_prompt_speed, self.slowest_prompt_position = speed, step.processed
        self.last_step = step
