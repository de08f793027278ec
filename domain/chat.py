"""Chat requests and the events a generation streams back."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(enum.Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    text: str
    image: bytes = b""


@dataclass(frozen=True)
class Sampling:
    """None means "use the default" (SPEC §12); 0 is a real value (greedy)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class ReasoningControls:
    enable_thinking: bool | None = None
    reasoning_effort: str | None = None  # "low" | "medium" | "high"
    preserve_thinking: bool | None = None


@dataclass(frozen=True)
class GenerateRequest:
    messages: tuple[ChatMessage, ...]
    sampling: Sampling = field(default_factory=Sampling)
    reasoning: ReasoningControls = field(default_factory=ReasoningControls)


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class Timings:
    prompt_n: int = 0
    prompt_ms: float = 0.0
    prompt_per_second: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0
    predicted_per_second: float = 0.0
    cache_n: int = 0


@dataclass(frozen=True)
class ChatChunk:
    """One streamed piece from the engine, already decoded from its wire format."""

    reasoning: str = ""
    content: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class Done:
    finish_reason: FinishReason
    usage: Usage
    timings: Timings


GenerateEvent = ReasoningDelta | ContentDelta | Done
