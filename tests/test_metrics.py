"""The metrics endpoint (issue 13): what it says about RPCs, models and their
llama-servers, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from dataclasses import replace

import grpc
import pytest
from conftest import RunningService
from e2e import ask
from fakes import FakeInspector, FakeLauncher, FakeMemory, model_facts
from prometheus_client.parser import text_string_to_metric_families
from test_slot import until

from llamagate.application.registry import ModelRegistry, model_of
from llamagate.application.slot import ModelSlot, SlotSettings
from llamagate.domain.chat import GenerateRequest, Role, Sampling, text_message
from llamagate.domain.errors import EngineTimedOut
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.model_config import ModelSpec, ServiceConfig
from llamagate.domain.ports import MemoryProbe
from llamagate.domain.restart_policy import RestartPolicy
from llamagate.server.address import Address
from llamagate.server.metrics import Metrics, engine_families
from llamagate.server.observability import ObservabilitySettings, metrics_address
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# As llama-server writes it (tools/server/server-task.cpp, to_metrics), shortened.
LLAMA_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 33
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 47
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
"""


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples: Samples, prefix: str, **labels: str) -> set[str]:
    wanted = set(labels.items())
    return {name for name, sample_labels in samples if name.startswith(prefix) and wanted <= sample_labels}


# -- llama-server's text, re-exported -------------------------------------------------


def test_engine_metrics_keep_llama_servers_names_and_gain_the_model_label():
    families = {f.name: f for f in engine_families(LLAMA_METRICS, "chat")}
    samples = {s.name: s for f in families.values() for s in f.samples}
    assert set(samples) == {"llamacpp:prompt_tokens_total", "llamacpp:n_tokens_max", "llamacpp:requests_processing"}
    assert all(s.labels == {"model": "chat"} for s in samples.values())
    assert samples["llamacpp:n_tokens_max"].value == 47
    # a high-water mark that llama-server calls a counter, but names without _total: kept, as a gauge
    assert families["llamacpp:n_tokens_max"].type == "gauge"
    assert families["llamacpp:prompt_tokens"].type == "counter"


def test_text_that_is_not_prometheus_text_is_refused():
    with pytest.raises(ValueError):
        engine_families("<html>not found</html>\n", "chat")


# -- settings -----------------------------------------------------------------------


def test_no_metrics_endpoint_unless_an_address_is_given():
    assert ObservabilitySettings.from_env({}).metrics is None
    assert ObservabilitySettings.from_env({"LLAMAGATE_METRICS_ADDRESS": "[::1]:9464"}).metrics == Address("::1", 9464)


@pytest.mark.parametrize("env, named", [
    ({"LLAMAGATE_METRICS_ADDRESS": "9464"}, "LLAMAGATE_METRICS_ADDRESS"),
    ({"LLAMAGATE_METRICS_ADDRESS": "unix:/run/metrics.sock"}, "LLAMAGATE_METRICS_ADDRESS"),
    ({"LLAMAGATE_METRICS_ADDRESS": "127.0.0.1:70000"}, "LLAMAGATE_METRICS_ADDRESS"),
    ({"LLAMAGATE_LOG_FORMAT": "yaml"}, "LLAMAGATE_LOG_FORMAT"),
])
def test_a_malformed_setting_is_an_error_naming_the_variable(env, named):
    with pytest.raises(ValueError, match=named):
        Settings.from_env(env)


# -- RPCs ---------------------------------------------------------------------------


async def _rpc_outcomes() -> Metrics:
    metrics = Metrics()
    server = grpc.aio.server(interceptors=[metrics.interceptor])

    async def ok(request: bytes, context) -> bytes:
        return b"ok"

    async def refuse(request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        raise AssertionError("abort raises")

    async def crash(request: bytes, context) -> bytes:
        raise RuntimeError("a bug")

    async def slow(request: bytes, context) -> bytes:
        await asyncio.sleep(60)
        return b""

    async def two(request: bytes, context):
        yield b"1"
        yield b"2"

    async def stream(request: bytes, context):
        for _ in range(1000):
            yield b"x"
            await asyncio.sleep(0.01)

    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(ok), "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
        "Crash": grpc.unary_unary_rpc_method_handler(crash), "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Stream": grpc.unary_stream_rpc_method_handler(stream), "Short": grpc.unary_stream_rpc_method_handler(two),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Probe", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(2):
                await channel.unary_unary("/test.Probe/Ok")(b"")
            for method in ("Refuse", "Crash"):
                with pytest.raises(grpc.aio.AioRpcError):
                    await channel.unary_unary(f"/test.Probe/{method}")(b"")
            with pytest.raises(grpc.aio.AioRpcError):
                await channel.unary_unary("/test.Probe/Slow")(b"", timeout=0.2)
            assert [r async for r in channel.unary_stream("/test.Probe/Short")(b"")] == [b"1", b"2"]
            call = channel.unary_stream("/test.Probe/Stream")(b"")
            await call.read()
            call.cancel()  # the client goes away mid-stream
            await until(lambda: handled(metrics, "Stream", "server_stream", "CANCELLED") == 1)
            await until(lambda: handled(metrics, "Slow", "unary", "DEADLINE_EXCEEDED") == 1)
    finally:
        await server.stop(None)
    return metrics


def handled(metrics: Metrics, method: str, kind: str, code: str) -> float | None:
    return metrics.registry.get_sample_value("grpc_server_handled_total", {
        "grpc_service": "test.Probe", "grpc_method": method, "grpc_type": kind, "grpc_code": code})


def test_every_rpc_is_counted_by_method_and_the_code_it_ended_with():
    metrics = asyncio.run(_rpc_outcomes())
    assert handled(metrics, "Ok", "unary", "OK") == 2
    assert handled(metrics, "Refuse", "unary", "NOT_FOUND") == 1  # the code it was aborted with
    assert handled(metrics, "Crash", "unary", "UNKNOWN") == 1  # a bug
    assert handled(metrics, "Slow", "unary", "DEADLINE_EXCEEDED") == 1
    assert handled(metrics, "Short", "server_stream", "OK") == 1
    assert handled(metrics, "Stream", "server_stream", "CANCELLED") == 1  # timed to the end of the stream
    assert metrics.registry.get_sample_value("grpc_server_handling_seconds_count", {
        "grpc_service": "test.Probe", "grpc_method": "Ok", "grpc_type": "unary", "grpc_code": "OK"}) == 2
    assert metrics.registry.get_sample_value("grpc_server_started_total", {
        "grpc_service": "test.Probe", "grpc_method": "Stream", "grpc_type": "server_stream"}) == 1


# -- models, against fakes --------------------------------------------------------------

A, B = "/models/a.gguf", "/models/b.gguf"
SMALL = LoadOptions(context_length=2048)
QUESTION = GenerateRequest((text_message(Role.USER, "hi"),), Sampling(max_tokens=8))


async def _queue_story() -> tuple[Samples, Samples, Samples]:
    """One generation held in the only slot, one waiting; then both done; then the child stops answering."""
    metrics = Metrics()
    inspector, launcher = FakeInspector(model_facts(A), model_facts(B)), FakeLauncher()

    def make_slot(view: MemoryProbe) -> ModelSlot:
        return ModelSlot(inspector, launcher, view, SlotSettings(queue_size=4, restart=RestartPolicy(enabled=False)),
                         telemetry=metrics.telemetry, name=model_of(view))

    models = ModelRegistry(make_slot, FakeMemory(), ServiceConfig(models=(ModelSpec("idle", B, SMALL),)))
    metrics.follow(models)
    port = metrics.serve(Address("127.0.0.1", 0), models)
    try:
        async for _ in models.load("chat", A, SMALL):
            pass
        chat = launcher.engines[-1].chat
        chat.hold = asyncio.Event()
        slot = await models.slot_for("chat")
        generations = [asyncio.create_task(_drain(slot.generate(QUESTION))) for _ in range(2)]
        await until(lambda: chat.streaming == 1 and slot.in_flight == 2)
        busy = await asyncio.to_thread(scrape, port)
        chat.hold.set()
        await asyncio.gather(*generations)
        idle = await asyncio.to_thread(scrape, port)

        async def not_answering() -> str:
            raise EngineTimedOut("llama-server sent no metrics within 2 s")

        chat.engine_metrics = not_answering  # type: ignore[method-assign]
        failed = await asyncio.to_thread(scrape, port)
    finally:
        metrics.close()
        await models.close()
    return busy, idle, failed


async def _drain(events) -> None:
    async for _ in events:
        pass


def test_queue_state_and_the_engines_own_metrics_are_labelled_by_the_id_requests_name():
    busy, idle, failed = asyncio.run(_queue_story())
    assert value(busy, "llamagate_slots_busy", model="chat") == 1
    assert value(busy, "llamagate_queue_waiting", model="chat") == 1
    assert value(busy, "llamagate_slots", model="chat") == 1
    assert value(busy, "llamagate_time_to_first_token_seconds_count", model="chat") == 1
    assert value(busy, "llamacpp:requests_processing", model="chat") == 1  # the child's, fetched at scrape time
    assert value(busy, "llamagate_model_state", model="chat", state="ready") == 1
    assert value(busy, "llamagate_model_state", model="idle", state="empty") == 1  # configured, no child: fine
    assert not names(busy, "llamacpp:", model="idle")

    assert value(idle, "llamagate_slots_busy", model="chat") == 0
    assert value(idle, "llamagate_queue_waiting", model="chat") == 0
    assert value(idle, "llamagate_time_to_first_token_seconds_count", model="chat") == 2
    assert value(idle, "llamagate_model_load_seconds_count", model="chat") == 1

    assert not names(failed, "llamacpp:")  # left out of this scrape, the rest is there
    assert value(failed, "llamagate_engine_scrape_failures_total", model="chat") == 1
    assert value(failed, "llamagate_slots", model="chat") == 1


# -- the real service ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(llama_cpp_tree, smollm2_path):
    """A service with its metrics endpoint on a free port; a configured model never loaded."""
    settings = Settings.from_env(os.environ)
    settings = replace(settings, observability=replace(settings.observability, metrics=metrics_address("127.0.0.1:0")))
    config = ServiceConfig(models=(ModelSpec("idle", str(smollm2_path), on_demand=False),))
    running = RunningService(settings, config=config)
    yield running
    running.close()


@pytest.mark.engine
def test_a_scrape_counts_what_the_clients_did_and_shows_each_model_and_its_llama_server(measured, smollm2_path):
    stub = pb_grpc.LlamaGateServiceStub(grpc.insecure_channel(measured.address))
    for name in ("smol", "other"):
        list(stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path), model=name,
                                                options=pb.LoadOptions(context_length=1024)), timeout=120))
    tokens = 0
    for _ in range(3):
        request = ask("Say hello.", max_tokens=12)
        request.model = "smol"
        events = list(stub.Generate(request, timeout=60))
        tokens += events[-1].done.usage.completion_tokens
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Generate(pb.GenerateRequest(model="nope", messages=ask("hi").messages), timeout=60))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND

    samples = scrape(measured.app.metrics_port)
    generate = {"grpc_service": "llamagate.v1.LlamaGateService", "grpc_method": "Generate",
                "grpc_type": "server_stream"}
    assert value(samples, "grpc_server_handled_total", **generate, grpc_code="OK") == 3
    assert value(samples, "grpc_server_handled_total", **generate, grpc_code="NOT_FOUND") == 1
    assert value(samples, "grpc_server_handling_seconds_count", **generate, grpc_code="OK") == 3
    assert value(samples, "grpc_server_handled_total", **{**generate, "grpc_method": "LoadModel"},
                 grpc_code="OK") == 2

    assert value(samples, "llamagate_time_to_first_token_seconds_count", model="smol") == 3
    assert value(samples, "llamagate_tokens_per_second_count", model="smol") == 3
    assert value(samples, "llamagate_generated_tokens_total", model="smol") == tokens > 0
    assert value(samples, "llamagate_model_state", model="smol", state="ready") == 1
    assert value(samples, "llamagate_model_state", model="idle", state="empty") == 1
    assert value(samples, "llamagate_model_load_seconds_count", model="other") == 1
    assert value(samples, "llamagate_slots_busy", model="smol") == 0

    # llama-server's own, per child: it decoded what we counted; the other child nothing yet; "idle" has none
    assert value(samples, "llamacpp:tokens_predicted_total", model="smol") == tokens
    assert value(samples, "llamacpp:tokens_predicted_total", model="other") == 0
    assert value(samples, "llamacpp:n_tokens_max", model="smol") is not None
    assert not names(samples, "llamacpp:", model="idle")
    assert not names(samples, "llamagate_engine_scrape_failures")
