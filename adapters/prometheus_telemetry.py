"""The ``Telemetry`` port as Prometheus metrics (prometheus_client).

Every metric is labelled by ``model``, the id requests name it by; the
Hub's download bytes are one counter for the service. The metrics live in
the ``CollectorRegistry`` given (the service's own, not prometheus_client's
global one, so two services in one process never share counts).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llamagate.domain.model_state import ModelState

# A small model on a CPU answers in tens of ms; a large prompt on a busy GPU
# in tens of seconds.
_FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SPEED_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
_LOAD_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class PrometheusTelemetry:
    def __init__(self, registry: CollectorRegistry) -> None:
        model = ("model",)
        self._first_token = Histogram(
            "llamagate_time_to_first_token_seconds", "From a generation's arrival at the model (its queueing "
            "included) to its first token", model, buckets=_FIRST_TOKEN_BUCKETS, registry=registry)
        self._speed = Histogram(
            "llamagate_tokens_per_second", "Each generation's decode speed, by the engine's own timing", model,
            buckets=_SPEED_BUCKETS, registry=registry)
        self._tokens = Counter("llamagate_generated_tokens", "Tokens generated", model, registry=registry)
        self._waiting = Gauge("llamagate_queue_waiting", "Requests waiting for a slot", model, registry=registry)
        self._busy = Gauge("llamagate_slots_busy", "Slots generating now", model, registry=registry)
        self._slots = Gauge("llamagate_slots", "Slots the model's engine runs (--parallel)", model,
                            registry=registry)
        self._state = Gauge("llamagate_model_state", "1 for the state each model is in, 0 for the others",
                            ("model", "state"), registry=registry)
        self._load = Histogram(
            "llamagate_model_load_seconds", "From planning an engine's start to its being ready (restarts too)",
            model, buckets=_LOAD_BUCKETS, registry=registry)
        self._downloaded = Counter("llamagate_hub_downloaded_bytes", "Bytes downloaded from the Hub",
                                   registry=registry)

    def first_token(self, model: str, seconds: float) -> None:
        self._first_token.labels(model).observe(seconds)

    def generated(self, model: str, tokens: int, seconds: float) -> None:
        self._tokens.labels(model).inc(tokens)
        self._speed.labels(model).observe(tokens / seconds)

    def queue(self, model: str, waiting: int, running: int, slots: int) -> None:
        self._waiting.labels(model).set(waiting)
        self._busy.labels(model).set(running)
        self._slots.labels(model).set(slots)

    def model_state(self, model: str, state: ModelState) -> None:
        for each in ModelState:
            self._state.labels(model, each.value).set(1 if each is state else 0)

    def load_finished(self, model: str, seconds: float) -> None:
        self._load.labels(model).observe(seconds)

    def downloaded(self, size: int) -> None:
        self._downloaded.inc(size)
