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
class ChatMessage:
    role: Role
    text: str
    image: bytes = b""


@dataclass(frozen=True)
class Range:
    """Where a number is valid: from ``low`` (excluded when ``above``) to ``high``."""

    low: float
    high: float | None = None
    above: bool = False


def _ranged(low: float, high: float | None = None, *, above: bool = False) -> Any:
    return field(default=None, metadata={"range": Range(low, high, above)})


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
    LENGTH = "length"  # max_tokens reached
    TOOL_CALLS = "tool_calls"
    CONTEXT_LIMIT = "context_limit"  # the slot's context filled up before max_tokens


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
class Image:
    mime: str  # image/png, image/jpeg, image/gif or image/webp
    data: bytes


@dataclass(frozen=True)
class CallMessage:
    role: Role
    text: str
    images: tuple[Image, ...] = ()


@dataclass(frozen=True)
class ResolvedSampling:
    """Every sampler set: the request's values, defaults where it left them unset."""

    temperature: float
    top_p: float
    top_k: int  # 0 = disabled
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    seed: int | None = None  # None: the engine picks one


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


@dataclass(frozen=True)
class ChatChunk:
    """One streamed piece from the engine, already decoded from its wire format."""

    reasoning: str = ""
    content: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    progress: PromptStep | None = None  # prompt processing: one more decode done


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
