"""Shaping a checked chat request into a ChatCall, and folding the stream back.

Defaults and the always-on wall-clock backstop are SPEC §12's. Nothing here
knows how an engine spells a request: ``adapters/llama_http`` turns the
ChatCall into llama-server's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    ImagePart,
    ReasoningDelta,
    ResolvedSampling,
    Sampling,
    Timings,
    Tool,
    ToolChoiceMode,
    Usage,
)
from llamagate.domain.request_checks import image_mime

DEFAULT_SAMPLING = ResolvedSampling(
    temperature=0.6,
    top_p=0.95,
    top_k=20,
    min_p=0.01,
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    repeat_last_n=64,
)
MAX_TOKENS_WITHOUT_CONTEXT = 32768
WALL_CLOCK_BACKSTOP_MS = 600_000

def chat_call(request: GenerateRequest, caps: Capabilities, context_length: int) -> ChatCall:
    """The call to make for a validated request (see ``request_checks.validate``)."""
    r = request.reasoning
    kwargs = request_template_kwargs(
        caps,
        enable_thinking=r.enable_thinking,
        reasoning_effort=r.reasoning_effort,
        preserve_thinking=r.preserve_thinking,
    )
    tools, choice = _tools_offered(request)
    return ChatCall(
        messages=tuple(_call_message(m, keep_reasoning=caps.preserve_thinking) for m in request.messages),
        sampling=_whole_context(resolve_sampling(request.sampling), context_length),
        # Callers that omit max_tokens must not be cut short.
        max_tokens=request.sampling.max_tokens or context_length or MAX_TOKENS_WITHOUT_CONTEXT,
        stop=request.sampling.stop,
        template_kwargs=kwargs,
        wall_clock_limit_ms=WALL_CLOCK_BACKSTOP_MS,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=request.parallel_tool_calls,
        response_format=request.response_format,
    )


def _whole_context(s: ResolvedSampling, context_length: int) -> ResolvedSampling:
    """-1 ("the whole context") as the number: llama-server takes 0 or more.
    (A context of 0 is unknown: then -1 stays.)"""
    if context_length <= 0:
        return s
    if s.repeat_last_n == -1:
        s = replace(s, repeat_last_n=context_length)
    if s.dry.penalty_last_n == -1:
        s = replace(s, dry=replace(s.dry, penalty_last_n=context_length))
    return s


def _tools_offered(request: GenerateRequest) -> tuple[tuple[Tool, ...], ToolChoiceMode]:
    """A named tool choice offers only that tool, and requires a call: the
    engine's grammar then admits nothing else. NONE offers no tools at all."""
    choice = request.tool_choice
    if choice.name:
        return tuple(t for t in request.tools if t.name == choice.name), ToolChoiceMode.REQUIRED
    if choice.mode is ToolChoiceMode.NONE:
        return (), ToolChoiceMode.NONE
    return request.tools, choice.mode


def resolve_sampling(s: Sampling, d: ResolvedSampling = DEFAULT_SAMPLING) -> ResolvedSampling:
    """The request's samplers, ``d``'s where it left them unset."""
    return ResolvedSampling(
        temperature=d.temperature if s.temperature is None else s.temperature,
        top_p=d.top_p if s.top_p is None else s.top_p,
        top_k=max(0, d.top_k if s.top_k is None else s.top_k),  # negative: disabled
        min_p=d.min_p if s.min_p is None else s.min_p,
        repetition_penalty=d.repetition_penalty if s.repetition_penalty is None else s.repetition_penalty,
        presence_penalty=d.presence_penalty if s.presence_penalty is None else s.presence_penalty,
        frequency_penalty=d.frequency_penalty if s.frequency_penalty is None else s.frequency_penalty,
        repeat_last_n=d.repeat_last_n if s.repeat_last_n is None else s.repeat_last_n,
        seed=s.seed,
        dry=s.dry,
        logit_bias=s.logit_bias,
        top_logprobs=s.top_logprobs,
    )


def _call_message(message: ChatMessage, *, keep_reasoning: bool) -> CallMessage:
    parts = tuple(
        Image(part.mime or image_mime(part.data) or "", part.data) if isinstance(part, ImagePart) else part
        for part in message.parts
    )
    # Earlier reasoning goes back only where the template renders it; elsewhere
    # it would be dropped by the template anyway, or shown as plain text.
    reasoning = message.reasoning if keep_reasoning else ""
    return CallMessage(message.role, parts, reasoning, message.tool_calls, message.tool_call_id)


@dataclass
class StreamFolder:
    """Turns engine chunks into deltas and one final Done event.

    Keeps the last usage and timings seen (llama-server sends them late). A
    reply that reasoned but never produced content or a tool call gets its
    reasoning as the content, so a client that shows only content still sees
    an answer. Tool-call pieces pass through by index; a token's logprobs go
    with the first delta of its chunk (none, for tool-call markup). A
    length stop before ``max_tokens`` is the context filling up. Prompt
    progress reports yield nothing; they give the slowest prompt speed seen.
    """

    max_tokens: int = 0
    reasoning: list[str] = field(default_factory=list)
    saw_content: bool = False
    saw_tool_call: bool = False
    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    last_step: PromptStep | None = None
    slowest_prompt_speed: float | None = None  # tokens/s of the slowest decode of the prompt
    slowest_prompt_position: int = 0  # tokens in the slot when that decode ended

    def feed(self, chunk: ChatChunk) -> list[GenerateEvent]:
        events: list[GenerateEvent] = []
        logprobs = chunk.logprobs
        if chunk.reasoning:
            self.reasoning.append(chunk.reasoning)
            events.append(ReasoningDelta(chunk.reasoning, logprobs))
            logprobs = ()
        if chunk.content:
            self.saw_content = True
            events.append(ContentDelta(chunk.content, logprobs))
        if chunk.tool_calls:
            self.saw_tool_call = True
            events.extend(chunk.tool_calls)
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
        if self.reasoning and not self.saw_content and not self.saw_tool_call:
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
