"""Chat requests and the events a generation streams back."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llamagate.domain.batching import PromptStep


class Role(enum.Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    data: bytes
    mime: str = ""  # "": read from the bytes


Part = TextPart | ImagePart


@dataclass(frozen=True)
class ToolCall:
    """A call an assistant made: ``arguments`` is a JSON object, as text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    parts: tuple[Part, ...] = ()
    reasoning: str = ""  # assistant: the reasoning that came with this reply
    tool_calls: tuple[ToolCall, ...] = ()  # assistant
    tool_call_id: str = ""  # tool: the call this answers

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ImagePart))


def text_message(role: Role, text: str) -> ChatMessage:
    return ChatMessage(role, (TextPart(text),))


@dataclass(frozen=True)
class Tool:
    """A tool the client runs: ``parameters`` is a JSON Schema, as text ("" = none)."""

    name: str
    description: str = ""
    parameters: str = ""


class ToolChoiceMode(enum.Enum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    name: str = ""  # set: call this tool (mode is then REQUIRED)


class FormatKind(enum.Enum):
    TEXT = "text"
    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"
    GRAMMAR = "grammar"


@dataclass(frozen=True)
class ResponseFormat:
    kind: FormatKind = FormatKind.TEXT
    text: str = ""  # the schema (JSON text) or the GBNF grammar


@dataclass(frozen=True)
class Range:
    """Where a number is valid: from ``low`` (excluded when ``above``) to ``high``."""

    low: float
    high: float | None = None
    above: bool = False


def _ranged(low: float, high: float | None = None, *, above: bool = False) -> Any:
    return field(default=None, metadata={"range": Range(low, high, above)})


@dataclass(frozen=True)
class Dry:
    """DRY repetition penalty; None: llama-server's default (multiplier 0 = off)."""

    multiplier: float | None = _ranged(0.0)
    base: float | None = _ranged(1.0)
    allowed_length: int | None = _ranged(0)
    penalty_last_n: int | None = _ranged(-1)
    sequence_breakers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sampling:
    """None means "use the default" (SPEC §12); 0 is a real value (greedy).
    Each number's valid range sits beside it (``domain.generation.validate``)."""

    temperature: float | None = _ranged(0.0)
    top_p: float | None = _ranged(0.0, 1.0)
    top_k: int | None = None  # negative counts as 0 (disabled)
    min_p: float | None = _ranged(0.0, 1.0)
    repetition_penalty: float | None = _ranged(0.0, above=True)  # 0 would divide by zero
    presence_penalty: float | None = _ranged(-2.0, 2.0)
    max_tokens: int | None = _ranged(1)
    stop: tuple[str, ...] = ()
    seed: int | None = _ranged(0)
    frequency_penalty: float | None = _ranged(-2.0, 2.0)
    repeat_last_n: int | None = _ranged(-1)  # -1: the context; 0: off
    dry: Dry = field(default_factory=Dry)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    top_logprobs: int | None = _ranged(0, 20)  # None: no logprobs


@dataclass(frozen=True)
class ReasoningControls:
    enable_thinking: bool | None = None
    reasoning_effort: str | None = None  # "low" | "medium" | "high"
    preserve_thinking: bool | None = None


@dataclass(frozen=True)
class ServerTools:
    """Tools the service runs itself in an agent loop (SPEC §14)."""

    names: tuple[str, ...]
    max_iterations: int | None = _ranged(1, 100)  # None: 25
    tool_timeout_s: float | None = _ranged(0.0, above=True)  # None: 300; 9999 or more: none
    tool_turn_grammar: str = ""  # GBNF for the turns that may call tools ("" = none)


@dataclass(frozen=True)
class GenerateRequest:
    messages: tuple[ChatMessage, ...]
    sampling: Sampling = field(default_factory=Sampling)
    reasoning: ReasoningControls = field(default_factory=ReasoningControls)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool | None = None  # None: the template's own default
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    server_tools: ServerTools | None = None


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"  # max_tokens reached
    TOOL_CALLS = "tool_calls"
    CONTEXT_LIMIT = "context_limit"  # the slot's context filled up before max_tokens


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    prompt_n: int = 0
    prompt_ms: float = 0.0
    prompt_per_second: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0
    predicted_per_second: float = 0.0
    cache_n: int = 0
    draft_n: int = 0  # speculative decoding: tokens drafted
    draft_accepted_n: int = 0


@dataclass(frozen=True)
class Image:
    mime: str  # image/png, image/jpeg, image/gif or image/webp
    data: bytes


@dataclass(frozen=True)
class CallMessage:
    """A message as the engine gets it: parts in order, images with their type."""

    role: Role
    parts: tuple[TextPart | Image, ...] = ()
    reasoning: str = ""  # only where the template keeps earlier reasoning
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True)
class ResolvedSampling:
    """Every sampler set: the request's values, defaults where it left them unset."""

    temperature: float
    top_p: float
    top_k: int  # 0 = disabled
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float = 0.0
    repeat_last_n: int = 64
    seed: int | None = None  # None: the engine picks one
    dry: Dry = field(default_factory=Dry)
    logit_bias: tuple[tuple[int, float], ...] = ()
    top_logprobs: int | None = None


@dataclass(frozen=True)
class ChatCall:
    """One chat completion as the engine is asked for it: the domain's rules
    applied, nothing of any engine's wire format."""

    messages: tuple[CallMessage, ...]
    sampling: ResolvedSampling
    max_tokens: int
    stop: tuple[str, ...] = ()
    template_kwargs: Mapping[str, bool | str] = field(default_factory=dict)
    wall_clock_limit_ms: int = 0  # 0: none
    tools: tuple[Tool, ...] = ()  # what the model may call (a named choice: only that one)
    tool_choice: ToolChoiceMode = ToolChoiceMode.AUTO
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat = field(default_factory=ResponseFormat)


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of the tool call at ``index``; id and name come with its first piece."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class CallEnded:
    """The markup of the call at ``index`` is complete; ``recovered`` says
    why it was closed for the model when its closer was missing."""

    index: int
    recovered: str | None = None


@dataclass(frozen=True)
class TokenAlternative:
    token: str
    logprob: float
    data: bytes = b""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    data: bytes = b""
    top: tuple[TokenAlternative, ...] = ()


@dataclass(frozen=True)
class ChatChunk:
    """One streamed piece from the engine, already decoded from its wire format."""

    reasoning: str = ""
    content: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    progress: PromptStep | None = None  # prompt processing: one more decode done
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ReasoningDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ContentDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ToolStarted:
    """A server-side tool call begins: ``status`` is what to show meanwhile."""

    id: str
    name: str
    arguments: str  # JSON object
    status: str


@dataclass(frozen=True)
class ToolFinished:
    id: str
    name: str
    result: str
    failed: bool


@dataclass(frozen=True)
class Done:
    finish_reason: FinishReason
    usage: Usage
    timings: Timings


GenerateEvent = ReasoningDelta | ContentDelta | ToolCallDelta | ToolStarted | ToolFinished | Done
MarkupEvent = ContentDelta | ReasoningDelta | ToolCallDelta | CallEnded
