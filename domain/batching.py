"""How many prompt tokens llama-server decodes per step, so a cancel takes effect quickly.

llama-server acts on a cancel between decode calls, never inside one (no
abort callback is wired to its tasks), and it learns of the cancel at the end
of the decode in progress, so the slot is free at most two decodes after the
client left (see README, "Cancellation"). One decode handles up to
``--batch-size`` tokens: the batch is chosen so one decode lasts at most a
budget, from the slowest prompt speed measured on this model and hardware.
Before anything was measured on a CPU, the speed is estimated from the
arithmetic one prompt token costs at the slot's full context (the weights,
and attention over every earlier token) and what a CPU thread does per second;
on a GPU, a prior batch (GPUs decode hundreds of tokens in tens of ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llamagate.domain.model_facts import ModelFacts

BATCH_STEP = 32  # multiples of 32 suit every backend's kernels
MIN_BATCH = 32
MAX_BATCH = 2048  # llama-server's default: never larger than what it would choose
CPU_PRIOR_BATCH = 64
GPU_PRIOR_BATCH = 512
_BLEND = 0.5  # weight of a new measurement against what was known
# Multiply-adds a CPU thread does per second in llama.cpp's prompt kernels:
# ~47 G measured on a 2-core AMD EPYC (AVX-512) with SmolLM2, rounded down.
CPU_FLOPS_PER_THREAD = 40e9
# Bits per weight of each llama_ftype (general.file_type), as llama-quantize reports them.
_BITS_PER_WEIGHT: dict[int, float] = {
    0: 32.0, 1: 16.0, 2: 4.5, 3: 5.0, 7: 8.5, 8: 5.5, 9: 6.0, 10: 2.6, 11: 3.4, 12: 3.9, 13: 4.3, 14: 4.6,
    15: 4.85, 16: 5.5, 17: 5.7, 18: 6.6, 19: 2.1, 20: 2.3, 21: 2.6, 22: 3.3, 23: 3.1, 24: 1.6, 25: 4.5,
    26: 3.4, 27: 3.7, 28: 2.5, 29: 2.7, 30: 4.25, 31: 1.75, 32: 16.0, 36: 1.7, 37: 2.1, 38: 4.25,
}
_DEFAULT_BITS = 4.5
_CANCEL_MARGIN = 0.8  # of the bound: room for the HTTP thread, the probe, a busy machine


def decode_budget_s(cancel_within_s: float) -> float:
    """How long one decode may last so a cancel takes effect within
    ``cancel_within_s``: the cancel waits for the rest of the decode in
    progress and for one more."""
    if not math.isfinite(cancel_within_s) or cancel_within_s <= 0:
        return 0.0
    return cancel_within_s * _CANCEL_MARGIN / 2


def batch_size(tokens_per_s: float | None, decode_budget_s: float, *, on_gpu: bool) -> int:
    """The largest batch one decode finishes within ``decode_budget_s`` at
    ``tokens_per_s`` (None: not measured yet, the prior for the device)."""
    if tokens_per_s is None or not math.isfinite(tokens_per_s) or tokens_per_s <= 0:
        return GPU_PRIOR_BATCH if on_gpu else CPU_PRIOR_BATCH
    budget = max(decode_budget_s, 0.0) if math.isfinite(decode_budget_s) else 0.0
    tokens = min(tokens_per_s * budget, float(MAX_BATCH))
    return max(MIN_BATCH, int(tokens) // BATCH_STEP * BATCH_STEP)


@dataclass(frozen=True)
class PromptStep:
    """One progress report of prompt processing: tokens done, milliseconds since it began."""

    processed: int
    elapsed_ms: float


@dataclass(frozen=True)
class PromptCost:
    """What one prompt token costs, from the model's header."""

    weights_bytes: int
    file_type: int | None  # general.file_type
    layers: int
    attention_width: int  # heads x key length: the dot products per earlier token, per layer
    active_fraction: float = 1.0  # of the weights one token uses (mixture of experts: used / count)

    def flops_per_token(self, context: int) -> float:
        """Multiply-adds for one prompt token with ``context`` tokens before it."""
        bits = _BITS_PER_WEIGHT.get(self.file_type or -1, _DEFAULT_BITS)
        parameters = self.weights_bytes * 8 / bits * min(max(self.active_fraction, 0.0), 1.0)
        return 2 * parameters + 4 * self.layers * max(context, 0) * self.attention_width


def prompt_cost(facts: ModelFacts) -> PromptCost | None:
    """The cost model of ``facts`` (None when its header lacks the shape)."""
    h = facts.hyperparameters
    layers, width = h.block_count, h.embedding_length
    if not layers or not width:
        return None
    heads, key = _widest(h.head_count), h.key_length
    experts, used = h.expert_count, _widest(h.expert_used_count)
    return PromptCost(
        weights_bytes=facts.size_bytes,
        file_type=h.file_type,
        layers=layers,
        attention_width=heads * key if heads and key else width,
        active_fraction=used / experts if experts and used else 1.0,
    )


def _widest(value: int | tuple[int, ...] | None) -> int:
    if isinstance(value, tuple):
        return max(value, default=0)
    return value or 0


def estimated_speed(cost: PromptCost, context: int, threads: int) -> float | None:
    """Prompt tokens per second on ``threads`` CPU threads with ``context``
    tokens in the slot (None when the cost is unknown)."""
    flops = cost.flops_per_token(context)
    if flops <= 0 or threads < 1:
        return None
    return threads * CPU_FLOPS_PER_THREAD / flops


def step_speed(before: PromptStep, after: PromptStep) -> float | None:
    """Tokens per second of the decode between two reports (None if they show none)."""
    tokens, ms = after.processed - before.processed, after.elapsed_ms - before.elapsed_ms
    if tokens <= 0 or not (math.isfinite(ms) and ms > 0):
        return None
    return tokens * 1000.0 / ms


def learned_speed(known: float | None, measured: float, *, position: int, slot_context: int,
                  prior: float | None) -> float | None:
    """The prompt speed to size the next batch from, after one more measurement.

    A decode costs more the fuller the context (attention reads all of it),
    so a speed measured in the first half of a slot's context overstates the
    speed near its end: such a measurement may only lower what is known (or
    the ``prior`` estimate), never raise it. One from the second half counts
    either way.
    """
    if not math.isfinite(measured) or measured <= 0:
        return known
    if position * 2 >= slot_context > 0:
        return blend_speed(known, measured)
    ceiling = known if known is not None else prior
    return blend_speed(known, measured) if ceiling is not None and measured < ceiling else known


def blend_speed(known: float | None, measured: float) -> float:
    """What is known after one more measurement: a running average that
    follows the hardware (a busier machine, a longer context) without
    jumping on one odd request."""
    return measured if known is None else known + _BLEND * (measured - known)
