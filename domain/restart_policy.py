"""When a dead or frozen engine is started again, and when the service gives up.

Pure rules; the application layer's supervisor sleeps and restarts. Failures
are counted while they come in a row: a model that served for
``stable_after_s`` has recovered, and its next failure counts as the first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llamagate.domain.errors import InvalidArgument

_MAX_RESTARTS_LIMIT = 1000


@dataclass(frozen=True)
class RestartPolicy:
    enabled: bool = True
    max_restarts: int = 5  # failures in a row that are restarted; the next one leaves the model FAILED
    backoff_s: float = 0.5  # delay before the first restart; doubles with each failure in a row
    max_backoff_s: float = 30.0
    stable_after_s: float = 60.0  # serving this long resets the count

    def __post_init__(self) -> None:
        if not 0 <= self.max_restarts <= _MAX_RESTARTS_LIMIT:
            raise InvalidArgument(f"max_restarts must be 0..{_MAX_RESTARTS_LIMIT}, got {self.max_restarts}")
        for name in ("backoff_s", "max_backoff_s", "stable_after_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidArgument(f"{name} must be a finite number >= 0, got {value}")
        if self.max_backoff_s < self.backoff_s:
            raise InvalidArgument(f"max_backoff_s ({self.max_backoff_s}) is below backoff_s ({self.backoff_s})")


def failures_in_a_row(policy: RestartPolicy, previous: int, served_s: float) -> int:
    """The count after a failure that ended ``served_s`` seconds of serving
    (0 when the engine never came up)."""
    return 1 if served_s >= policy.stable_after_s else previous + 1


def restart_delay(policy: RestartPolicy, failures: int) -> float | None:
    """Seconds to wait before restarting after ``failures`` in a row (>= 1);
    None when the policy gives up."""
    if not policy.enabled or failures > policy.max_restarts:
        return None
    doublings = min(max(failures - 1, 0), 64)  # 2**64 times any backoff is past every cap
    return min(policy.max_backoff_s, policy.backoff_s * 2.0**doublings)
