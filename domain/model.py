"""Plain data the domain takes and returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from llamagate.domain.model_shape import ModelShape

if TYPE_CHECKING:  # load_plan builds on this module
    from llamagate.domain.load_plan import LoadPlan


class KvCacheType(enum.Enum):
    """KV cache element types, valued as llama-server's --cache-type-k/v names."""

    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    Q8_0 = "q8_0"
    Q5_1 = "q5_1"
    Q5_0 = "q5_0"
    Q4_1 = "q4_1"
    Q4_0 = "q4_0"
    IQ4_NL = "iq4_nl"


class Speculative(enum.Enum):
    OFF = "off"
    DEFAULT = "default"
    NGRAM_SIMPLE = "ngram-simple"
    NGRAM_MOD = "ngram-mod"


class ReasoningStyle(enum.Enum):
    NONE = "none"
    ENABLE_THINKING = "enable_thinking"
    REASONING_EFFORT = "reasoning_effort"
    THINKING = "thinking"


class ModelState(enum.Enum):
    EMPTY = "empty"
    LOADING = "loading"
    READY = "ready"


@dataclass(frozen=True)
class Capabilities:
    reasoning: bool = False
    reasoning_style: ReasoningStyle = ReasoningStyle.NONE
    reasoning_always_on: bool = False
    preserve_thinking: bool = False
    tools: bool = False
    vision: bool = False


@dataclass(frozen=True)
class ModelFacts:
    """What the GGUF header says about a model (shard 1 holds all metadata)."""

    path: str
    architecture: str
    native_context_length: int
    chat_template: str | None
    size_bytes: int  # all shards together
    shape: ModelShape | None = None  # None: too little metadata to estimate the KV cache
    shape_error: str = ""


@dataclass(frozen=True)
class LoadOptions:
    context_length: int = 0  # 0 = native
    parallel: int = 1
    cache_type: KvCacheType = KvCacheType.F16
    threads: int = 0  # 0 = llama-server decides
    chat_template: str = ""
    speculative: Speculative = Speculative.OFF
    mmproj_path: str = ""


@dataclass(frozen=True)
class ModelInfo:
    id: str = ""
    path: str = ""
    architecture: str = ""
    native_context_length: int = 0
    context_length: int = 0
    capabilities: Capabilities = field(default_factory=Capabilities)
    cache_type: KvCacheType = KvCacheType.F16
    state: ModelState = ModelState.EMPTY
    pid: int = 0
    parallel: int = 0
    has_chat_template: bool = False
    size_bytes: int = 0
    last_error: str = ""  # why the last ready model went away on its own


class LoadPhase(enum.Enum):
    RESOLVING = "resolving"
    PLANNING = "planning"
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"


@dataclass(frozen=True)
class LoadEvent:
    phase: LoadPhase
    message: str = ""
    bytes_loaded: int = 0
    bytes_total: int = 0
    model: ModelInfo | None = None
    plan: LoadPlan | None = None  # PLANNING
