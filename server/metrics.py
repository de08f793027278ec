"""The metrics endpoint: Prometheus text over HTTP, on a port of its own (issue 13).

One registry, three sources:

- every RPC, by ``RpcMetrics`` below: started, handled and handling time by
  service, method, type and status code (go-grpc-prometheus's names, so its
  dashboards work). A stream's time runs to its end; its code is how it
  ended: OK, the code it was aborted with, CANCELLED when the client went
  away, DEADLINE_EXCEEDED when its deadline passed, UNKNOWN for a bug;
- the models' work, told by the application through the ``Telemetry`` port
  (adapters/prometheus_telemetry.py);
- each ready model's llama-server ``/metrics``, fetched when Prometheus
  scrapes (all at once, each within the engine client's bound) and
  re-exported with a ``model`` label; a child that does not answer is left
  out of that scrape and counted.

``build_registry`` makes the ``Metrics`` of a service and has them follow
the model registry, so that ``create_server`` finds them (``metrics_of``)
however the two were called.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import inspect
import logging
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from llamagate.adapters.prometheus_telemetry import PrometheusTelemetry
from llamagate.application.registry import ModelRegistry
from llamagate.domain.errors import LlamagateError
from llamagate.domain.model_state import ModelState
from llamagate.server.address import Address
from llamagate.server.listen import ListenError

log = logging.getLogger(__name__)

_HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_ENGINE_TIMEOUT_S = 2.5  # a scrape waits this long for the children, at most (each answers within 2 s or fails)
_RPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")


class Metrics:
    """A service's metrics: the registry, and what feeds it."""

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series double the text and tell a scraper nothing it uses
        self.registry = CollectorRegistry()
        self.telemetry = PrometheusTelemetry(self.registry)
        self.interceptor = RpcMetrics(self.registry)
        self._server: Any = None

    def follow(self, models: ModelRegistry) -> None:
        """Each model's state from now on (the configured ones' now); ``metrics_of(models)`` is this."""
        for model in models.ids():
            self.telemetry.model_state(model, models.status(model).state)
        models.on_change(lambda model, info: self.telemetry.model_state(model, info.state))
        _attached[models] = self

    def serve(self, address: Address, models: ModelRegistry) -> int:
        """Serve ``/metrics`` on ``address`` (in a thread of its own), the
        ready models' llama-server metrics fetched on this event loop; the
        port bound. Raises ListenError when it cannot listen there."""
        self.registry.register(EngineMetrics(models, asyncio.get_running_loop()))
        try:
            self._server, _ = start_http_server(address.port, address.host, registry=self.registry)
        except OSError as error:
            raise ListenError(f"cannot serve metrics on {address}: {error.strerror or error}") from None
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


_attached: weakref.WeakKeyDictionary[ModelRegistry, Metrics] = weakref.WeakKeyDictionary()


def metrics_of(models: ModelRegistry) -> Metrics | None:
    """The metrics whose telemetry ``models`` reports to (``Metrics.follow``)."""
    return _attached.get(models)


# -- RPCs --------------------------------------------------------------------------


class RpcMetrics(grpc.aio.ServerInterceptor):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._started = Counter("grpc_server_started", "RPCs started on the server", _RPC_LABELS,
                                registry=registry)
        self._handled = Counter("grpc_server_handled", "RPCs completed on the server, whatever their status",
                                (*_RPC_LABELS, "grpc_code"), registry=registry)
        self._seconds = Histogram("grpc_server_handling_seconds", "From an RPC's start to its end (a stream's"
                                  " last message)", (*_RPC_LABELS, "grpc_code"), buckets=_HANDLING_BUCKETS,
                                  registry=registry)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: gRPC answers UNIMPLEMENTED without us
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        kind, behaviour, wrap = _shape(handler)
        if behaviour is None:
            return handler
        labels = (service, method, kind)
        wrapped = self._streaming(behaviour, labels) if inspect.isasyncgenfunction(behaviour) \
            else self._unary(behaviour, labels)
        return wrap(wrapped, handler.request_deserializer, handler.response_serializer)

    def _unary(self, behaviour: Callable[..., Any], labels: tuple[str, str, str]) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = self._start(labels)
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await behaviour(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except BaseException as error:
                code = _ending(error, context)
                raise
            finally:
                self._end(labels, code, started)
        return run

    def _streaming(self, behaviour: Callable[..., Any], labels: tuple[str, str, str]) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = self._start(labels)
            code = grpc.StatusCode.UNKNOWN
            try:
                async with contextlib.aclosing(behaviour(request, context)) as responses:
                    async for response in responses:
                        yield response
                code = context.code() or grpc.StatusCode.OK
            except BaseException as error:
                code = _ending(error, context)
                raise
            finally:
                self._end(labels, code, started)
        return run

    def _start(self, labels: tuple[str, str, str]) -> float:
        self._started.labels(*labels).inc()
        return time.monotonic()

    def _end(self, labels: tuple[str, str, str], code: grpc.StatusCode, started: float) -> None:
        self._handled.labels(*labels, code.name).inc()
        self._seconds.labels(*labels, code.name).observe(time.monotonic() - started)


def _shape(handler: grpc.RpcMethodHandler[Any, Any]) -> tuple[str, Callable[..., Any] | None, Callable[..., Any]]:
    """The RPC's type (go-grpc-prometheus's words), its behaviour, and how to make a handler of that shape."""
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream", handler.stream_stream, grpc.stream_stream_rpc_method_handler
    if handler.request_streaming:
        return "client_stream", handler.stream_unary, grpc.stream_unary_rpc_method_handler
    if handler.response_streaming:
        return "server_stream", handler.unary_stream, grpc.unary_stream_rpc_method_handler
    return "unary", handler.unary_unary, grpc.unary_unary_rpc_method_handler


def _ending(error: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status an RPC that raised ``error`` ends with."""
    if isinstance(error, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the client went away, or its deadline passed
        remaining = context.time_remaining()
        return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 \
            else grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


# -- llama-server's own metrics ------------------------------------------------------


class EngineMetrics(Collector):
    """Each ready model's llama-server metrics, labelled by model, fetched at
    scrape time (the scrape runs in the HTTP server's thread, the fetch on the
    service's event loop), and how many fetches failed, by model."""

    def __init__(self, models: ModelRegistry, loop: asyncio.AbstractEventLoop) -> None:
        self._models, self._loop = models, loop
        self._failures: collections.Counter[str] = collections.Counter()  # by model
        self._lock = threading.Lock()  # scrapes may run at once, each in a thread

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing is fetched at registration

    def collect(self) -> Iterable[Metric]:
        texts: dict[str, str] = {}
        failures: list[str] = []
        try:
            fetching = asyncio.run_coroutine_threadsafe(self._fetch(), self._loop)
            try:
                texts, failures = fetching.result(_ENGINE_TIMEOUT_S + 1)
            except concurrent.futures.TimeoutError:  # the loop is stuck: the rest of the scrape still answers
                fetching.cancel()
        except RuntimeError:  # the loop has stopped (the service is closing)
            pass
        families: dict[str, Metric] = {}
        for model, text in texts.items():
            try:
                parsed = engine_families(text, model)
            except ValueError:  # not Prometheus text
                failures.append(model)
                continue
            for family in parsed:
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                merged.samples.extend(family.samples)
        failed = CounterMetricFamily("llamagate_engine_scrape_failures", "Fetches of a model's llama-server "
                                     "metrics that failed (left out of that scrape)", labels=("model",))
        with self._lock:
            self._failures.update(failures)
            for model, count in sorted(self._failures.items()):
                failed.add_metric((model,), count)
        return [*families.values(), failed]

    async def _fetch(self) -> tuple[dict[str, str], list[str]]:
        """The metrics text of each ready model's child, and the models whose child did not answer."""
        ready = [entry.id for entry in self._models.entries() if entry.info.state is ModelState.READY]
        slots = [await self._models.slot_for(model) for model in ready]  # ready: returned at once, nothing loaded
        answers = await asyncio.gather(*(asyncio.wait_for(slot.engine_metrics(), _ENGINE_TIMEOUT_S)
                                         for slot in slots), return_exceptions=True)
        texts, failures = {}, []
        for model, answer in zip(ready, answers, strict=True):
            if isinstance(answer, Exception):
                if not isinstance(answer, (LlamagateError, TimeoutError)):  # a bug: still only this child's loss
                    log.error("fetching the metrics of %s failed unexpectedly", model, exc_info=answer)
                failures.append(model)
            elif isinstance(answer, BaseException):
                raise answer
            elif answer is not None:  # None: it stopped serving since
                texts[model] = answer
        return texts, failures


def engine_families(text: str, model: str) -> list[Metric]:
    """The families in a llama-server's metrics text, each sample labelled
    ``model``. Raises ValueError when the text is not Prometheus text.

    Names are kept as llama-server writes them: a "counter" it names without
    ``_total`` (``n_tokens_max``, a high-water mark) would be renamed by the
    parser, and is passed on as the gauge it is."""
    bare_counters = {name for name in re.findall(r"^# TYPE (\S+) counter\s*$", text, re.MULTILINE)
                     if not name.endswith("_total")}
    families = []
    for family in text_string_to_metric_families(text):
        kind, rename = family.type, {}
        if kind == "counter" and family.name in bare_counters:
            kind, rename = "gauge", {f"{family.name}_total": family.name}
        metric = Metric(family.name, family.documentation, kind)
        metric.samples = [Sample(rename.get(s.name, s.name), _labelled(s.labels, model), s.value, s.timestamp,
                                 s.exemplar) for s in family.samples]
        families.append(metric)
    return families


def _labelled(labels: Mapping[str, str], model: str) -> dict[str, str]:
    return {**labels, "model": model}
