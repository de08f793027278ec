"""End to end: a real gRPC channel, the real llama-server, the real SmolLM2."""

from __future__ import annotations

import threading

import grpc
import httpx
import psutil
import pytest
from e2e import (
    NOT_SERVING,
    SERVING,
    ask,
    assert_code,
    assert_still_serves,
    engine,
    engine_url,
    health_of,
    llama_server_children,
    load,
    wait_until,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llamagate.server.app import SERVICE_NAME
from llamagate.v1 import llamagate_pb2 as pb

pytestmark = pytest.mark.engine


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
    slots = engine(info.pid).get("/slots").json()
    assert sum(s["n_ctx"] for s in slots) == 2048  # what llama-server really runs with


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


def test_two_concurrent_generations_are_generated_at_the_same_time_on_two_slots(stub, smollm2_path):
    info = load(stub, smollm2_path, context_length=2048, parallel=2)[-1].model
    child = engine(info.pid)
    assert info.parallel == 2 and len(child.get("/slots").json()) == 2
    calls = [stub.Generate(ask(f"Write a long story about llama number {i}.", max_tokens=400, temperature=0.8,
                                 seed=i), timeout=120) for i in range(2)]
    firsts = [next(call) for call in calls]  # both are streaming now

    busy = [s["is_processing"] for s in child.get("/slots").json()]

    rest = [list(call) for call in calls]
    assert busy == [True, True], "the two generations did not run at the same moment"
    assert all(f.WhichOneof("event") in ("content_delta", "reasoning_delta") for f in firsts)
    assert all(r[-1].WhichOneof("event") == "done" and r[-1].done.usage.completion_tokens > 1 for r in rest)


def test_unload_leaves_no_llama_server_process(stub, smollm2_path):
    pid = load(stub, smollm2_path, context_length=1024)[-1].model.pid

    reply = stub.UnloadModel(pb.UnloadModelRequest())

    assert reply.was_loaded and reply.pid == pid
    assert not psutil.pid_exists(pid)
    assert llama_server_children() == []
    assert stub.GetStatus(pb.GetStatusRequest()).model.state == pb.MODEL_STATE_EMPTY


def test_a_load_started_while_another_loads_wins_and_the_first_is_cancelled(stub, smollm2_path):
    stub.UnloadModel(pb.UnloadModelRequest())
    first = stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path)), timeout=300)
    first_pid = next(e for e in first if e.phase == pb.LOAD_PHASE_STARTING).model.pid
    psutil.Process(first_pid).suspend()  # it cannot become healthy now: the race has one outcome

    second = load(stub, smollm2_path, context_length=1024)

    with pytest.raises(grpc.RpcError) as caught:
        list(first)
    assert caught.value.code() == grpc.StatusCode.CANCELLED and "superseded" in caught.value.details()
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
    assert [p.pid for p in llama_server_children()] == [stub.GetStatus(pb.GetStatusRequest()).model.pid]


def test_health_is_not_serving_until_a_model_is_ready(service, stub, smollm2_path):
    health = health_of(service)
    check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    stub.UnloadModel(pb.UnloadModelRequest())
    assert health.Check(check).status == NOT_SERVING
    assert health.Check(health_pb2.HealthCheckRequest()).status == SERVING

    load(stub, smollm2_path, context_length=1024)

    assert health.Check(check).status == SERVING


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
    status = stub.GetStatus(pb.GetStatusRequest()).model
    assert (status.state, status.pid) == (pb.MODEL_STATE_READY, pid)
    assert_still_serves(stub)


def test_loading_a_file_that_is_not_gguf_is_invalid_argument_naming_it(stub, smollm2_path, tmp_path):
    pid = load(stub, smollm2_path, context_length=1024)[-1].model.pid
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("these are not the weights you are looking for")

    details = assert_code(lambda: stub.LoadModel(pb.LoadModelRequest(path=str(bogus))), grpc.StatusCode.INVALID_ARGUMENT)

    assert str(bogus) in details and "GGUF" in details
    assert stub.GetStatus(pb.GetStatusRequest()).model.pid == pid
    assert_still_serves(stub)


def test_defect_16_a_header_with_an_absurd_block_count_is_refused_naming_the_key(stub, smollm2_path, tmp_path):
    from gguf import GGUFReader

    pid = load(stub, smollm2_path, context_length=1024)[-1].model.pid
    hostile = tmp_path / "hostile.gguf"
    hostile.write_bytes(smollm2_path.read_bytes())
    field = GGUFReader(hostile, "r+").fields["llama.block_count"]
    field.parts[field.data[0]][0] = 16_777_246  # one 4-byte edit

    details = assert_code(lambda: stub.LoadModel(pb.LoadModelRequest(path=str(hostile)), timeout=30),
                          grpc.StatusCode.INVALID_ARGUMENT)
    plan_details = assert_code(lambda: stub.PlanModel(pb.PlanModelRequest(path=str(hostile)), timeout=30),
                               grpc.StatusCode.INVALID_ARGUMENT)

    assert "llama.block_count = 16777246" in details and "llama.block_count" in plan_details
    assert stub.GetStatus(pb.GetStatusRequest()).model.pid == pid
    assert_still_serves(stub)


def test_a_load_request_without_a_path_or_with_bad_options_is_invalid_argument(stub):
    assert "path" in assert_code(lambda: stub.LoadModel(pb.LoadModelRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    bad_threads = pb.LoadModelRequest(path="/x.gguf", options=pb.LoadOptions(threads=-2))
    assert "threads" in assert_code(lambda: stub.LoadModel(bad_threads), grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize("sampling", [{"max_tokens": -5}, {"temperature": -0.5}, {"top_p": 1.5},
                                      {"temperature": float("inf")}, {"min_p": float("nan")},
                                      {"repetition_penalty": 0.0}])
def test_out_of_range_sampling_is_invalid_argument_and_the_service_keeps_serving(stub, smollm2_path, sampling):
    """Defects 8 and 17 among them: a zero repetition penalty, NaN and infinities."""
    load(stub, smollm2_path, context_length=1024)
    field = next(iter(sampling))

    details = assert_code(lambda: stub.Generate(ask("hi", **sampling)), grpc.StatusCode.INVALID_ARGUMENT)

    assert field in details
    assert_still_serves(stub)


def test_defect_5_a_conversation_longer_than_the_context_is_out_of_range_with_the_numbers(stub, smollm2_path):
    load(stub, smollm2_path, context_length=256)

    details = assert_code(lambda: stub.Generate(ask("llama " * 400, max_tokens=8), timeout=60),
                          grpc.StatusCode.OUT_OF_RANGE)

    assert "256" in details and "context_length" in details
    assert_still_serves(stub)


def test_a_model_llama_server_cannot_load_fails_with_its_last_output(stub, llama_cpp_tree):
    stub.UnloadModel(pb.UnloadModelRequest())
    vocab_only = llama_cpp_tree / "models" / "ggml-vocab-gpt-2.gguf"  # a header without weights

    details = assert_code(lambda: stub.LoadModel(pb.LoadModelRequest(path=str(vocab_only))), grpc.StatusCode.UNAVAILABLE)

    assert "exited with code" in details and "last output" in details
    assert llama_server_children() == []
    # a model loaded by request that never came up leaves nothing behind: its caller heard why
    assert stub.GetStatus(pb.GetStatusRequest()).model.state == pb.MODEL_STATE_EMPTY
    assert not stub.ListModels(pb.ListModelsRequest()).models


def test_defect_18_a_model_llama_server_rejects_brings_the_previous_one_back(service, stub, smollm2_path,
                                                                             llama_cpp_tree):
    old_pid = load(stub, smollm2_path, context_length=1024)[-1].model.pid
    vocab_only = llama_cpp_tree / "models" / "ggml-vocab-gpt-2.gguf"

    # loaded under another id, a rejected model never touches the one serving
    details = assert_code(lambda: stub.LoadModel(pb.LoadModelRequest(path=str(vocab_only))), grpc.StatusCode.UNAVAILABLE)
    assert "being started again" not in details
    assert [p.pid for p in llama_server_children()] == [old_pid]
    assert stub.GetStatus(pb.GetStatusRequest()).model.pid == old_pid  # the failed one was forgotten

    # loaded in place of it (the same id), the previous model comes back
    replacing = pb.LoadModelRequest(path=str(vocab_only), model="SmolLM2-135M-Instruct.Q4_1")
    details = assert_code(lambda: stub.LoadModel(replacing), grpc.StatusCode.UNAVAILABLE)
    assert "SmolLM2-135M-Instruct.Q4_1 is being started again" in details
    assert wait_until(lambda: stub.GetStatus(pb.GetStatusRequest()).model.state == pb.MODEL_STATE_READY, 60)
    status = stub.GetStatus(pb.GetStatusRequest()).model
    assert status.path == str(smollm2_path.resolve()) and status.pid != old_pid
    assert [p.pid for p in llama_server_children()] == [status.pid]
    check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    assert health_of(service).Check(check).status == SERVING
    assert_still_serves(stub)


# ------------------------------------------------------------ cancellation, stops, crashes


def test_cancelling_a_generation_frees_the_slot_and_the_service_goes_on(stub, smollm2_path):
    info = load(stub, smollm2_path, context_length=2048)[-1].model
    call = stub.Generate(ask("Write a very long story about a llama.", max_tokens=1500))
    first = next(call)
    assert first.WhichOneof("event") in ("content_delta", "reasoning_delta")

    call.cancel()

    child = engine(info.pid)
    assert wait_until(lambda: not any(s["is_processing"] for s in child.get("/slots").json()))
    assert_still_serves(stub)


@pytest.mark.parametrize(("act", "reason"), [("unload", "was unloaded"), ("replace", "replaced by a later load")])
def test_defect_11_unloading_or_replacing_mid_generation_ends_the_stream_aborted(stub, smollm2_path, act, reason):
    load(stub, smollm2_path, context_length=2048)
    call = stub.Generate(ask("Write a very long story about a llama.", max_tokens=1500, temperature=0.8), timeout=120)
    next(call)

    if act == "unload":
        stub.UnloadModel(pb.UnloadModelRequest())
    else:
        load(stub, smollm2_path, context_length=1024)

    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.ABORTED, caught.value.details()
    assert reason in caught.value.details()


def test_cancelling_a_load_stops_its_child(stub, smollm2_path):
    stub.UnloadModel(pb.UnloadModelRequest())  # nothing to bring back afterwards
    call = stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path)))
    pid = next(e for e in call if e.phase == pb.LOAD_PHASE_STARTING).model.pid

    call.cancel()

    assert wait_until(lambda: not psutil.pid_exists(pid))
    assert wait_until(lambda: stub.GetStatus(pb.GetStatusRequest()).model.state == pb.MODEL_STATE_EMPTY)
    assert llama_server_children() == []


# ------------------------------------------------------------ message size


def test_defect_9_an_image_over_4_mib_reaches_the_service(stub, smollm2_path):
    load(stub, smollm2_path, context_length=1024)
    big_png = b"\x89PNG\r\n\x1a\n" + b"\0" * (6 << 20)
    request = pb.GenerateRequest(messages=[pb.Message(role=pb.ROLE_USER, text="what is it", parts=[pb.ContentPart(image=pb.Image(data=big_png))])])

    details = assert_code(lambda: stub.Generate(request, timeout=60), grpc.StatusCode.INVALID_ARGUMENT)

    assert "vision projector" in details  # read by the service: the 4 MiB gRPC default is gone


def test_defect_9_a_request_over_the_limit_is_refused_naming_the_setting(tmp_path, smollm2_path, llama_cpp_tree):
    import os
    from dataclasses import replace

    from conftest import RunningService

    from llamagate.server.settings import Settings
    from llamagate.v1 import llamagate_pb2_grpc

    small = RunningService(replace(Settings.from_env(os.environ), max_message_bytes=1 << 20))
    try:
        channel = grpc.insecure_channel(small.address)
        stub = llamagate_pb2_grpc.LlamaGateServiceStub(channel)
        request = pb.GenerateRequest(messages=[pb.Message(role=pb.ROLE_USER, parts=[pb.ContentPart(image=pb.Image(data=b"\0" * (3 << 19)))])])

        details = assert_code(lambda: stub.Generate(request, timeout=30), grpc.StatusCode.RESOURCE_EXHAUSTED)

        assert "LLAMAGATE_MAX_MESSAGE_MB" in details and f"{1 << 20:,}" in details
        assert stub.GetStatus(pb.GetStatusRequest()).model.state == pb.MODEL_STATE_EMPTY  # still answering
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch).status == SERVING  # streaming handlers pass the size check too
        watch.cancel()
    finally:
        small.close()


# ------------------------------------------------------------ the engine binary


def test_defect_2_an_engine_that_cannot_run_fails_the_load_and_the_loaded_model_keeps_serving(
        tmp_path, smollm2_path, cache_dir):
    import os
    import shutil
    from dataclasses import replace

    from conftest import RunningService

    from llamagate.adapters.engine_discovery import find_llama_server
    from llamagate.server.settings import Settings
    from llamagate.v1 import llamagate_pb2_grpc

    binary = tmp_path / "llama-server"
    shutil.copy2(find_llama_server(os.environ, cache_dir), binary)
    settings = Settings.from_env(os.environ)
    service = RunningService(replace(settings, env={**settings.env, "LLAMA_SERVER_PATH": str(binary)}))
    try:
        stub = llamagate_pb2_grpc.LlamaGateServiceStub(grpc.insecure_channel(service.address))
        pid = load(stub, smollm2_path, context_length=1024)[-1].model.pid
        broken = tmp_path / "broken"
        broken.write_bytes(b"\x7fELF not really")  # an upgrade gone wrong
        broken.chmod(0o755)
        os.replace(broken, binary)  # the running child keeps the old file

        details = assert_code(lambda: stub.LoadModel(pb.LoadModelRequest(
            path=str(smollm2_path), options=pb.LoadOptions(context_length=2048)), timeout=60),
            grpc.StatusCode.UNAVAILABLE)

        assert str(binary) in details
        status = stub.GetStatus(pb.GetStatusRequest()).model
        assert (status.state, status.pid, status.context_length) == (pb.MODEL_STATE_READY, pid, 1024)
        assert_still_serves(stub)
    finally:
        service.close()
