"""How many prompt tokens llama-server decodes per step, so a cancel takes effect quickly.

llama-server acts on a cancel between decode calls, never inside one (no
abort callback is wired to its tasks), and it learns of the cancel at the end
of the decode in progress, so the slot is free at most two decodes after the
client left (see README, "Cancellation"). One decode handles up to
``--batch-size`` tokens: the batch is chosen so one decode lasts at most a
budget, from the slowest prompt speed measured on this model and hardware.
Before anything was measured, a prior: GPUs decode hundreds of tokens in a few
tens of milliseconds, CPUs far fewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BATCH_STEP = 32  # multiples of 32 suit every backend's kernels
MIN_BATCH = 32
MAX_BATCH = 2048  # llama-server's default: never larger than what it would choose
CPU_PRIOR_BATCH = 64
GPU_PRIOR_BATCH = 512
_BLEND = 0.5  # weight of a new measurement against what was known
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


def step_speed(before: PromptStep, after: PromptStep) -> float | None:
    """Tokens per second of the decode between two reports (None if they show none)."""
    tokens, ms = after.processed - before.processed, after.elapsed_ms - before.elapsed_ms
    if tokens <= 0 or not (math.isfinite(ms) and ms > 0):
        return None
    return tokens * 1000.0 / ms


def learned_speed(known: float | None, measured: float, *, position: int, slot_context: int,
                  decode_budget_s: float, on_gpu: bool) -> float | None:
    """The prompt speed to size the next batch from, after one more measurement.

    A decode costs more the fuller the context (attention reads all of it),
    so a speed measured in the first half of a slot's context overstates the
    speed near its end: such a measurement may only lower what is known (or
    the prior), never raise it. One from the second half counts either way.
    """
    if not math.isfinite(measured) or measured <= 0:
        return known
    if position * 2 >= slot_context > 0:
        return blend_speed(known, measured)
    ceiling = known
    if ceiling is None and decode_budget_s > 0:
        ceiling = (GPU_PRIOR_BATCH if on_gpu else CPU_PRIOR_BATCH) / decode_budget_s
    return blend_speed(known, measured) if ceiling is not None and measured < ceiling else known


def blend_speed(known: float | None, measured: float) -> float:
    """What is known after one more measurement: a running average that
    follows the hardware (a busier machine, a longer context) without
    jumping on one odd request."""
    return measured if known is None else known + _BLEND * (measured - known)
