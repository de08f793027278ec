"""Timing a generation for the service's telemetry (the ``Telemetry`` port)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llamagate.domain.chat import GenerateEvent, Timings, Usage
from llamagate.domain.ports import Telemetry


class GenerationClock:
    """One generation, from the moment it was asked for: its first token,
    then its decode speed when it ends."""

    def __init__(self, telemetry: Telemetry, model: str, now: Callable[[], float]) -> None:
        self._telemetry, self._model, self._now = telemetry, model, now
        self._started = now()
        self._first: float | None = None

    def saw(self, events: Sequence[GenerateEvent]) -> None:
        """The events one engine chunk made: the first that makes any is the first token."""
        if events and self._first is None:
            self._first = self._now()
            self._telemetry.first_token(self._model, self._first - self._started)

    def finished(self, usage: Usage, timings: Timings) -> None:
        """The stream ended whole: the tokens it made, over the engine's own
        decode time (what it measured, without our streaming), else ours
        since the first token."""
        tokens = usage.completion_tokens
        if timings.predicted_ms > 0:
            seconds = timings.predicted_ms / 1000
        else:
            seconds = self._now() - self._first if self._first is not None else 0.0
        if tokens > 0 and seconds > 0:
            self._telemetry.generated(self._model, tokens, seconds)
