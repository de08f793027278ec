"""What a model file says about itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from llamagate.domain.hyperparameters import Hyperparameters


@dataclass(frozen=True)
class ModelFacts:
    """What the GGUF header says about a model (shard 1 holds all metadata)."""

    path: str
    architecture: str
    native_context_length: int
    chat_template: str | None
    size_bytes: int  # all shards together
    # as the file holds them, unchecked: the planner checks their bounds and
    # derives the KV-relevant shape (domain.model_shape) when it needs it
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)


@dataclass(frozen=True)
class MoreBytes:
    """A header read from a prefix that ends too early: read at least ``at_least`` more bytes."""

    at_least: int
