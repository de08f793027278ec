"""End to end: a real gRPC channel, the real llama-server, the real SmolLM2."""

from __future__ import annotations

import threading

import grpc
import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llamagate.v1 import llamagate_pb2 as pb
from llamagate.server.app import SERVICE_NAME

pytestmark = pytest.mark.engine


def load(stub, path, **options) -> list[pb.LoadEvent]:
    request = pb.LoadModelRequest(path=str(path), options=pb.LoadOptions(**options))
    return list(stub.LoadModel(request, timeout=300))


def ask(text: str, **sampling) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        messages=[pb.Message(role=pb.ROLE_USER, text=text)],
        sampling=pb.Sampling(**sampling),
    )


def llama_server_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "llama-server"]


def engine_url(pid: int) -> str:
    ports = [c.laddr.port for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    return f"http://127.0.0.1:{ports[0]}"


def engine(pid: int) -> httpx.Client:
    """A direct line to the child, with the key only its parent (and its owner) can read."""
    key = psutil.Process(pid).environ()["LLAMA_API_KEY"]
    return httpx.Client(base_url=engine_url(pid), headers={"Authorization": f"Bearer {key}"}, timeout=120)


def assert_code(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if not isinstance(result, pb.ModelInfo | pb.UnloadModelResponse):
            list(result)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def test_load_streams_phases_and_ends_ready_with_model_info(stub, smollm2_path):
    events = load(stub, smollm2_path, context_length=2048)

    phases = [e.phase for e in events]
    assert phases[:3] == [pb.LOAD_PHASE_RESOLVING, pb.LOAD_PHASE_PLANNING, pb.LOAD_PHASE_STARTING]
    assert phases[-1] == pb.LOAD_PHASE_READY
    assert set(phases[3:-1]) <= {pb.LOAD_PHASE_LOADING}
    info = events[-1].model
    assert info.architecture == "llama"
    assert info.native_context_length == 8192
    assert info.context_length == 2048
    assert info.has_chat_template
    assert info.state == pb.MODEL_STATE_READY
    assert psutil.Process(info.pid).name() == "llama-server"
    assert events[-1].bytes_total == smollm2_path.stat().st_size
    assert all(e.bytes_loaded <= e.bytes_total for e in events)


def test_generate_streams_deltas_and_reports_llama_servers_usage(stub, smollm2_path):
    info = load(stub, smollm2_path, context_length=2048)[-1].model

    events = list(stub.Generate(ask("Name a colour.", temperature=0, max_tokens=12, seed=1), timeout=120))

    deltas = [e.content_delta for e in events if e.WhichOneof("event") == "content_delta"]
    assert deltas and all(deltas)
    assert events[-1].WhichOneof("event") == "done"
    done = events[-1].done
    assert done.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    # The same greedy request straight to llama-server must count the same tokens.
    direct = engine(info.pid).post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Name a colour."}], "temperature": 0, "max_tokens": 12,
              "seed": 1, "top_k": 20, "top_p": 0.95, "min_p": 0.01},
    ).json()
    assert done.usage.completion_tokens == direct["usage"]["completion_tokens"] > 0
    assert done.usage.completion_tokens == done.timings.predicted_n
    assert "".join(deltas) == direct["choices"][0]["message"]["content"]


def test_only_llamagate_can_talk_to_its_llama_server(stub, smollm2_path):
    pid = load(stub, smollm2_path, context_length=1024)[-1].model.pid
    url = engine_url(pid)

    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/slots").status_code == 401
    assert httpx.post(f"{url}/v1/chat/completions", json={"messages": []}).status_code == 401
    assert "LLAMA_API_KEY" not in " ".join(psutil.Process(pid).cmdline())
    assert engine(pid).get("/slots").status_code == 200


def test_two_concurrent_generations_on_two_slots_both_complete(stub, smollm2_path):
    info = load(stub, smollm2_path, context_length=2048, parallel=2)[-1].model
    slots = engine(info.pid).get("/slots").json()
    assert info.parallel == 2 and len(slots) == 2

    results: dict[int, list[pb.GenerateEvent]] = {}

    def run(i: int) -> None:
        results[i] = list(stub.Generate(ask(f"Count to {i + 3}.", max_tokens=24), timeout=120))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)

    assert sorted(results) == [0, 1]
    for events in results.values():
        assert events[-1].WhichOneof("event") == "done"
        assert events[-1].done.usage.completion_tokens > 0


def test_unload_leaves_no_llama_server_process(stub, smollm2_path):
    pid = load(stub, smollm2_path, context_length=1024)[-1].model.pid

    reply = stub.UnloadModel(pb.UnloadModelRequest())

    assert reply.was_loaded and reply.pid == pid
    assert not psutil.pid_exists(pid)
    assert llama_server_children() == []
    assert stub.GetStatus(pb.GetStatusRequest()).state == pb.MODEL_STATE_EMPTY


def test_a_load_started_while_another_loads_wins_and_leaves_one_child(stub, smollm2_path):
    first = stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path)), timeout=300)
    first_pid = next(e for e in first if e.phase == pb.LOAD_PHASE_STARTING).model.pid

    second = load(stub, smollm2_path, context_length=1024)

    try:  # still loading when the second came: CANCELLED; already ready: replaced
        assert list(first)[-1].phase == pb.LOAD_PHASE_READY
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.CANCELLED, error.details()
        assert "superseded" in error.details()
    assert not psutil.pid_exists(first_pid)
    assert [p.pid for p in llama_server_children()] == [second[-1].model.pid]


def test_simultaneous_loads_leave_exactly_one_child(stub, smollm2_path):
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(load(stub, smollm2_path, context_length=1024)[-1].model.pid)
        except grpc.RpcError as error:
            outcomes.append(error.code())

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)

    winners = [o for o in outcomes if isinstance(o, int)]
    assert len(outcomes) == 3 and len(winners) >= 1
    assert set(outcomes) - set(winners) <= {grpc.StatusCode.CANCELLED}
    assert [p.pid for p in llama_server_children()] == [stub.GetStatus(pb.GetStatusRequest()).pid]


def test_health_is_not_serving_until_a_model_is_ready(service, stub, smollm2_path):
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(service.address))
    check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    stub.UnloadModel(pb.UnloadModelRequest())
    assert health.Check(check).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING

    load(stub, smollm2_path, context_length=1024)

    assert health.Check(check).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(service):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(service.address))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(reflect.ServerReflectionInfo(iter([request])))
    names = {s.name for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


# ------------------------------------------------------------ bad input


def test_generate_without_a_model_is_failed_precondition(stub):
    stub.UnloadModel(pb.UnloadModelRequest())
    details = assert_code(lambda: stub.Generate(ask("hi")), grpc.StatusCode.FAILED_PRECONDITION)
    assert "no model is loaded" in details


def test_loading_a_missing_path_is_not_found_and_the_loaded_model_stays(stub, smollm2_path, tmp_path):
    pid = load(stub, smollm2_path, context_length=1024)[-1].model.pid
    missing = tmp_path / "nope.gguf"

    details = assert_code(lambda: stub.LoadModel(pb.LoadModelRequest(path=str(missing))), grpc.StatusCode.NOT_FOUND)

    assert str(missing) in details
    status = stub.GetStatus(pb.GetStatusRequest())
    assert (status.state, status.pid) == (pb.MODEL_STATE_READY, pid)


def test_loading_a_file_that_is_not_gguf_is_invalid_argument_naming_it(stub, tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("these are not the weights you are looking for")
    details = assert_code(lambda: stub.LoadModel(pb.LoadModelRequest(path=str(bogus))), grpc.StatusCode.INVALID_ARGUMENT)
    assert str(bogus) in details and "GGUF" in details


def test_a_load_request_without_a_path_or_with_zero_slots_is_invalid_argument(stub):
    assert "path" in assert_code(lambda: stub.LoadModel(pb.LoadModelRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    bad_threads = pb.LoadModelRequest(path="/x.gguf", options=pb.LoadOptions(threads=-2))
    assert "threads" in assert_code(lambda: stub.LoadModel(bad_threads), grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize("sampling", [{"max_tokens": -5}, {"temperature": -0.5}, {"top_p": 1.5}])
def test_out_of_range_sampling_is_invalid_argument_and_the_service_keeps_serving(stub, smollm2_path, sampling):
    load(stub, smollm2_path, context_length=1024)
    field = next(iter(sampling))

    details = assert_code(lambda: stub.Generate(ask("hi", **sampling)), grpc.StatusCode.INVALID_ARGUMENT)

    assert field in details
    events = list(stub.Generate(ask("hi", max_tokens=4), timeout=60))
    assert events[-1].WhichOneof("event") == "done"


def test_a_model_llama_server_cannot_load_fails_with_its_last_output(stub, llama_cpp_tree):
    vocab_only = llama_cpp_tree / "models" / "ggml-vocab-gpt-2.gguf"  # a header without weights

    details = assert_code(lambda: stub.LoadModel(pb.LoadModelRequest(path=str(vocab_only))), grpc.StatusCode.UNAVAILABLE)

    assert "exited with code" in details and "last output" in details
    assert llama_server_children() == []
    assert stub.GetStatus(pb.GetStatusRequest()).state == pb.MODEL_STATE_EMPTY


# ------------------------------------------------------------ cancellation


def wait_until(predicate, timeout: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_cancelling_a_generation_frees_the_slot_and_the_service_goes_on(stub, smollm2_path):
    info = load(stub, smollm2_path, context_length=2048)[-1].model
    call = stub.Generate(ask("Write a very long story about a llama.", max_tokens=1500))
    first = next(call)
    assert first.WhichOneof("event") in ("content_delta", "reasoning_delta")

    call.cancel()

    child = engine(info.pid)
    assert wait_until(lambda: not any(s["is_processing"] for s in child.get("/slots").json()))
    events = list(stub.Generate(ask("hi", max_tokens=4), timeout=60))
    assert events[-1].WhichOneof("event") == "done"


def test_cancelling_a_load_stops_its_child(stub, smollm2_path):
    call = stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path)))
    pid = next(e for e in call if e.phase == pb.LOAD_PHASE_STARTING).model.pid

    call.cancel()

    assert wait_until(lambda: not psutil.pid_exists(pid))
    assert wait_until(lambda: stub.GetStatus(pb.GetStatusRequest()).state == pb.MODEL_STATE_EMPTY)
    assert llama_server_children() == []


def test_a_ready_llama_server_that_dies_empties_the_slot_and_says_why(service, stub, smollm2_path):
    pid = load(stub, smollm2_path, context_length=1024)[-1].model.pid
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(service.address))

    psutil.Process(pid).kill()  # as the OOM killer would

    assert wait_until(lambda: stub.GetStatus(pb.GetStatusRequest()).state == pb.MODEL_STATE_EMPTY)
    status = stub.GetStatus(pb.GetStatusRequest())
    assert "exited unexpectedly" in status.last_error
    check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    assert health.Check(check).status == health_pb2.HealthCheckResponse.NOT_SERVING
    details = assert_code(lambda: stub.Generate(ask("hi")), grpc.StatusCode.FAILED_PRECONDITION)
    assert "exited unexpectedly" in details
    load(stub, smollm2_path, context_length=1024)  # and a new load clears it
    assert stub.GetStatus(pb.GetStatusRequest()).last_error == ""
