"""Several SmolLM2 models in one service, end to end with the real llama-server (issue 12)."""

from __future__ import annotations

import os
import threading
from dataclasses import replace

import grpc
import psutil
import pytest
from conftest import RunningService
from e2e import ask, error_details, health_of, llama_server_children, wait_until
from grpc_health.v1 import health_pb2

from llamagate.domain.load_options import LoadOptions
from llamagate.domain.model_config import ModelSpec, ServiceConfig
from llamagate.server.app import model_health_name
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

pytestmark = pytest.mark.engine

SMALL = LoadOptions(context_length=1024)


@pytest.fixture
def start(llama_cpp_tree):
    """start(config) -> a stub of a fresh service; every service is stopped after the test."""
    services: list[RunningService] = []
    # a suspended child must not be taken for a frozen one here
    settings = replace(Settings.from_env({**os.environ, "LLAMAGATE_WATCHDOG_MS": "600000"}))

    def run(config: ServiceConfig) -> pb_grpc.LlamaGateServiceStub:
        service = RunningService(settings, config=config)
        services.append(service)
        run.service = service  # type: ignore[attr-defined]
        return pb_grpc.LlamaGateServiceStub(grpc.insecure_channel(service.address))

    yield run
    for service in services:
        service.close()


def spec(path, model: str, **fields) -> ModelSpec:
    return ModelSpec(model, str(path), fields.pop("options", SMALL), **fields)


def load(stub, model: str) -> pb.ModelInfo:
    return list(stub.LoadModel(pb.LoadModelRequest(model=model), timeout=120))[-1].model


def models(stub) -> dict[str, pb.ModelEntry]:
    return {e.info.id: e for e in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}


def answer(stub, model: str, timeout: float = 60, **sampling) -> str:
    request = ask("Say hello.", max_tokens=sampling.pop("max_tokens", 8), temperature=0, **sampling)
    request.model = model
    events = list(stub.Generate(request, timeout=timeout))
    assert events[-1].WhichOneof("event") == "done"
    return "".join(e.content_delta for e in events)


def footprint(stub, smollm2_path) -> int:
    """What one SmolLM2 slot holds as the service counts it (host memory: weights, KV cache, prompt cache)."""
    list(stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path), options=pb.LoadOptions(context_length=1024)),
                        timeout=120))
    (entry,) = stub.ListModels(pb.ListModelsRequest()).models
    stub.UnloadModel(pb.UnloadModelRequest())
    (held,) = entry.memory
    return held.bytes


def test_two_models_resident_at_once_each_answered_by_its_own_child(start, smollm2_path):
    stub = start(ServiceConfig(models=(
        spec(smollm2_path, "a"),
        spec(smollm2_path, "b", options=LoadOptions(context_length=2048, parallel=2)),
    )))
    a, b = load(stub, "a"), load(stub, "b")
    assert a.pid != b.pid and {a.pid, b.pid} == {p.pid for p in llama_server_children()}
    assert (a.context_length, b.context_length, b.parallel) == (1024, 2048, 2)
    listed = models(stub)
    assert {m: e.info.state for m, e in listed.items()} == {"a": pb.MODEL_STATE_READY, "b": pb.MODEL_STATE_READY}
    assert all(e.memory and e.memory[0].device == "host" and e.memory[0].bytes > 0 for e in listed.values())

    psutil.Process(a.pid).suspend()  # only a's child is stopped: b's answers, a's cannot
    try:
        assert answer(stub, "b")
        with pytest.raises(grpc.RpcError) as caught:
            answer(stub, "a", timeout=3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        psutil.Process(a.pid).resume()
    assert answer(stub, "a")

    with pytest.raises(grpc.RpcError) as caught:
        answer(stub, "")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "a, b" in caught.value.details()
    health = health_of(start.service)
    assert health.Check(health_pb2.HealthCheckRequest(service=model_health_name("b"))).status == 1  # SERVING
    stub.UnloadModel(pb.UnloadModelRequest(model="b"))
    assert health.Check(health_pb2.HealthCheckRequest(service=model_health_name("b"))).status == 2  # NOT_SERVING
    assert [p.pid for p in llama_server_children()] == [a.pid]


def test_a_budget_for_two_evicts_the_least_recently_used_idle_model(start, smollm2_path):
    probe = start(ServiceConfig(models=()))
    each = footprint(probe, smollm2_path)
    stub = start(ServiceConfig(models=tuple(spec(smollm2_path, m) for m in "xyz"), host_memory_bytes=each * 5 // 2))
    x, y = load(stub, "x"), load(stub, "y")
    answer(stub, "x")  # y is the least recently used now
    z = load(stub, "z")
    assert wait_until(lambda: not psutil.pid_exists(y.pid))
    assert {p.pid for p in llama_server_children()} == {x.pid, z.pid}
    assert models(stub)["y"].info.state == pb.MODEL_STATE_EMPTY


def test_a_streaming_or_pinned_model_is_never_evicted(start, smollm2_path):
    probe = start(ServiceConfig(models=()))
    each = footprint(probe, smollm2_path)
    stub = start(ServiceConfig(models=(spec(smollm2_path, "pinned", pinned=True), spec(smollm2_path, "busy"),
                                       spec(smollm2_path, "new")), host_memory_bytes=each * 5 // 2))
    pinned, busy = load(stub, "pinned"), load(stub, "busy")
    request = ask("Write a long story about a llama.", max_tokens=300, temperature=0)
    request.model = "busy"
    stream = stub.Generate(request, timeout=120)
    next(stream)  # it is streaming now
    with pytest.raises(grpc.RpcError) as caught:
        load(stub, "new")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_details(caught.value)["ErrorInfo"]
    assert info.reason == "NO_ROOM" and "pinned (pinned)" in caught.value.details()
    assert "busy (1 request(s) in flight)" in caught.value.details()
    assert {p.pid for p in llama_server_children()} == {pinned.pid, busy.pid}
    assert list(stream)[-1].WhichOneof("event") == "done"  # the stream was never cut

    new = load(stub, "new")  # busy is idle now: it goes, pinned stays
    assert {p.pid for p in llama_server_children()} == {pinned.pid, new.pid}


def test_concurrent_requests_for_an_unloaded_model_start_exactly_one_child(start, smollm2_path):
    stub = start(ServiceConfig(models=(spec(smollm2_path, "lazy"),)))
    assert llama_server_children() == []
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(answer(stub, "lazy", timeout=120))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(answers) == 4 and all(answers)
    assert len(llama_server_children()) == 1
    assert models(stub)["lazy"].info.state == pb.MODEL_STATE_READY


def test_an_idle_model_is_unloaded_after_its_ttl(start, smollm2_path):
    stub = start(ServiceConfig(models=(spec(smollm2_path, "brief", idle_ttl_s=1.0), spec(smollm2_path, "stays"))))
    answer(stub, "brief")
    stays = load(stub, "stays")
    assert wait_until(lambda: models(stub)["brief"].info.state == pb.MODEL_STATE_EMPTY, timeout=20)
    assert [p.pid for p in llama_server_children()] == [stays.pid]
    assert answer(stub, "brief")  # and loaded again on demand


def test_embed_and_rerank_through_the_service(start, smollm2_path, tmp_path):
    from test_embeddings_real import write_reranker

    from llamagate.domain.load_options import ModelMode, Pooling

    reranker = write_reranker(tmp_path / "tiny-reranker.gguf", smollm2_path)
    stub = start(ServiceConfig(models=(
        spec(smollm2_path, "embed", options=LoadOptions(context_length=1024, mode=ModelMode.EMBEDDING,
                                                        pooling=Pooling.MEAN)),
        spec(reranker, "rerank", options=LoadOptions(context_length=512, mode=ModelMode.RERANK)),
    )))
    texts = ["A llama is a camelid.", "A llama is a camelid.", "Quarterly tax filing deadlines."]
    vectors = [list(e.values) for e in stub.Embed(pb.EmbedRequest(model="embed", texts=texts), timeout=120).embeddings]
    info = stub.GetStatus(pb.GetStatusRequest(model="embed")).model
    assert len(vectors) == 3 and {len(v) for v in vectors} == {576}  # SmolLM2's embedding_length
    assert info.mode == pb.MODEL_MODE_EMBEDDING
    dot = sum(x * y for x, y in zip(vectors[0], vectors[1], strict=True))
    assert abs(dot - 1.0) < 1e-5  # normalised, identical: cosine 1
    assert sum(x * y for x, y in zip(vectors[0], vectors[2], strict=True)) < 0.999

    request = pb.RerankRequest(model="rerank", query="llamas", documents=["a", "b c", "llamas graze", "d"])
    first, second = (stub.Rerank(request, timeout=120).results for _ in range(2))
    assert sorted(r.index for r in first) == [0, 1, 2, 3]
    assert [r.index for r in first] == [r.index for r in second]
    assert [r.score for r in first] == sorted((r.score for r in first), reverse=True)

    with pytest.raises(grpc.RpcError) as caught:
        answer(stub, "embed")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(caught.value)["ErrorInfo"].reason == "WRONG_MODEL_MODE"
