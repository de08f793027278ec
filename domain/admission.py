"""Back-pressure rules: when a refused request may try again."""

from __future__ import annotations

import math

MIN_RETRY_S = 0.1
MAX_RETRY_S = 30.0
_BLEND = 0.2  # weight of one generation's duration in the running mean


def retry_after_s(mean_generation_s: float, waiting: int, slots: int) -> float:
    """A hint for a refused request: the time for the queue ahead of it and
    one generation to drain through ``slots`` slots, bounded to a sane range."""
    if not math.isfinite(mean_generation_s) or mean_generation_s <= 0:
        return MIN_RETRY_S
    estimate = mean_generation_s * (max(waiting, 0) + 1) / max(slots, 1)
    return min(MAX_RETRY_S, max(MIN_RETRY_S, estimate))


def blend_duration(mean_s: float, sample_s: float) -> float:
    """The running mean of generation durations after one more (0 = none yet)."""
    if not math.isfinite(sample_s) or sample_s < 0:
        return mean_s
    return sample_s if mean_s <= 0 else mean_s + _BLEND * (sample_s - mean_s)
