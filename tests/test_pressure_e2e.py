"""Generate under pressure, against the real llama-server and SmolLM2 (issue 8):
cancels and deadlines stop the work upstream, a bounded queue refuses what it
cannot serve, a dead or frozen engine comes back by itself.

Nothing here asserts on time (``bench/`` measures that); each test asserts
what happened: how much of a prompt llama-server processed, which calls were
refused before any other finished, which child serves now.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace

import grpc
import psutil
import pytest
from conftest import RunningService
from e2e import (
    NOT_SERVING,
    SERVING,
    ask,
    assert_code,
    assert_still_serves,
    engine,
    error_details,
    health_of,
    load,
    wait_until,
)
from grpc_health.v1 import health_pb2

from llamagate.application.slot import SlotSettings
from llamagate.application.watchdog import Watchdog
from llamagate.domain.restart_policy import RestartPolicy
from llamagate.server.app import SERVICE_NAME
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb

pytestmark = pytest.mark.engine

SLOT_SETTINGS = SlotSettings(
    queue_size=4,
    restart=RestartPolicy(max_restarts=1, backoff_s=0.2, max_backoff_s=0.2),
    watchdog=Watchdog(interval_s=0.5, silent_after_s=2.0),
)
# About 4,100 SmolLM2 tokens; processing it takes 15-20 s on 2 cores.
LONG_PROMPT = " ".join(f"w{i}x{i % 7}" for i in range(700))
STORY = "Write a very long story about a llama."


@pytest.fixture(scope="module")
def service(llama_cpp_tree, smollm2_path):  # conftest's `stub` talks to this one
    running = RunningService(replace(Settings.from_env(os.environ), slot=SLOT_SETTINGS))
    yield running
    running.close()


def status(stub) -> pb.ModelInfo:
    return stub.GetStatus(pb.GetStatusRequest()).model


def busy(child) -> bool:
    return any(slot["is_processing"] for slot in child.get("/slots").json())


def processed_of_long_prompt(stub) -> tuple[int, int]:
    """(prompt tokens llama-server had cached, prompt tokens) for a request
    sharing the first ~550 tokens of LONG_PROMPT: the cache holds what was
    processed of it before, and no more."""
    prefix = " ".join(LONG_PROMPT.split()[:90])
    done = list(stub.Generate(ask(prefix, max_tokens=1), timeout=120))[-1].done
    return done.timings.cache_n, done.usage.prompt_tokens


# ------------------------------------------------------------ cancellation


def test_a_cancel_during_a_long_prompt_stops_llama_server_processing_it(stub, smollm2_path):
    child = engine(load(stub, smollm2_path, context_length=8192)[-1].model.pid)
    call = stub.Generate(ask(LONG_PROMPT, max_tokens=8), timeout=120)
    assert wait_until(lambda: busy(child))
    time.sleep(0.3)

    call.cancel()

    assert wait_until(lambda: not busy(child), timeout=10)  # the whole prompt would keep it busy far longer
    cached, prompt = processed_of_long_prompt(stub)
    assert cached < prompt - 200, f"llama-server processed {cached} of the {prompt} shared tokens: the cancel came late"


def test_a_200_ms_deadline_ends_with_deadline_exceeded_and_stops_the_prompt(stub, smollm2_path):
    child = engine(load(stub, smollm2_path, context_length=8192)[-1].model.pid)

    details = assert_code(lambda: stub.Generate(ask(LONG_PROMPT, max_tokens=8), timeout=0.2),
                          grpc.StatusCode.DEADLINE_EXCEEDED)

    assert wait_until(lambda: not busy(child), timeout=10), details
    cached, prompt = processed_of_long_prompt(stub)
    assert cached < prompt - 200, f"llama-server processed {cached} of the {prompt} shared tokens after the deadline"


def test_a_cancel_after_the_first_token_frees_the_slot_long_before_the_reply_would_end(stub, smollm2_path):
    child = engine(load(stub, smollm2_path, context_length=8192)[-1].model.pid)
    call = stub.Generate(ask(STORY, max_tokens=6000, temperature=0.8), timeout=120)
    assert next(call).WhichOneof("event") in ("content_delta", "reasoning_delta")

    call.cancel()

    assert wait_until(lambda: not busy(child), timeout=10)
    assert_still_serves(stub)


# ------------------------------------------------------------ back-pressure


def test_two_slots_and_a_queue_of_four_serve_six_and_refuse_four_at_once(stub, smollm2_path):
    load(stub, smollm2_path, context_length=4096, parallel=2)
    results: list[tuple[str, float, grpc.RpcError | None]] = []
    start = threading.Barrier(10)

    def client() -> None:
        start.wait()
        try:
            events = list(stub.Generate(ask(STORY, max_tokens=48, temperature=0.0), timeout=120))
            assert events[-1].WhichOneof("event") == "done"
            results.append(("done", time.monotonic(), None))
        except grpc.RpcError as error:
            results.append((error.code().name, time.monotonic(), error))

    threads = [threading.Thread(target=client) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)

    done = [r for r in results if r[0] == "done"]
    refused = [r for r in results if r[0] == "RESOURCE_EXHAUSTED"]
    assert (len(done), len(refused)) == (6, 4), [r[0] for r in results]
    assert max(r[1] for r in refused) < min(r[1] for r in done)  # refused at once, not after waiting
    for _, _, error in refused:
        assert error is not None and "LLAMAGATE_QUEUE_SIZE" in error.details()
        details = error_details(error)
        assert details["RetryInfo"].retry_delay.ToMilliseconds() > 0
        assert details["ErrorInfo"].reason == "QUEUE_FULL"


# ------------------------------------------------------------ recovery


def test_sigkill_mid_stream_is_unavailable_and_the_restart_serves_the_next_request(stub, smollm2_path):
    before = load(stub, smollm2_path, context_length=2048)[-1].model
    call = stub.Generate(ask(STORY, max_tokens=1500), timeout=60)
    next(call)

    psutil.Process(before.pid).kill()

    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "exited unexpectedly" in caught.value.details()
    assert wait_until(lambda: status(stub).state == pb.MODEL_STATE_READY and status(stub).restarts == 1, 60)
    after = status(stub)
    assert after.pid != before.pid and "killed by SIGKILL" in after.last_error
    assert_still_serves(stub)  # no LoadModel in between


def test_sigstop_turns_health_not_serving_and_the_restart_brings_it_back(service, stub, smollm2_path):
    before = load(stub, smollm2_path, context_length=2048)[-1].model
    health = health_of(service)
    check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    assert health.Check(check).status == SERVING

    os.kill(before.pid, signal.SIGSTOP)

    assert wait_until(lambda: health.Check(check).status == NOT_SERVING, 30)
    assert wait_until(lambda: status(stub).state == pb.MODEL_STATE_READY and status(stub).restarts == 1, 60)
    assert "stopped answering" in status(stub).last_error
    assert not psutil.pid_exists(before.pid)  # the frozen child was killed, not left behind
    assert health.Check(check).status == SERVING
    assert_still_serves(stub)


def test_the_restart_cap_leaves_the_model_failed_with_the_reason(stub, smollm2_path):
    first = load(stub, smollm2_path, context_length=1024)[-1].model.pid
    psutil.Process(first).kill()
    assert wait_until(lambda: status(stub).state == pb.MODEL_STATE_READY and status(stub).restarts == 1, 60)

    psutil.Process(status(stub).pid).kill()  # again, before it served for long: the cap (1) is reached

    assert wait_until(lambda: "gave up" in status(stub).last_error, 30)
    final = status(stub)
    assert final.state == pb.MODEL_STATE_FAILED and final.pid == 0 and final.restarts == 1
    assert "LLAMAGATE_RESTART_MAX" in final.last_error
    details = assert_code(lambda: stub.Generate(ask("hi")), grpc.StatusCode.FAILED_PRECONDITION)
    assert "gave up" in details


# ------------------------------------------------------------ why it ended


def test_the_done_event_tells_max_tokens_from_a_full_context(stub, smollm2_path):
    load(stub, smollm2_path, context_length=256)
    words = " ".join(f"word{i}" for i in range(40))
    request = f"Repeat these words one hundred times, separated by commas: {words}"

    capped = list(stub.Generate(ask(request, max_tokens=5, temperature=0.0), timeout=120))[-1].done
    full = list(stub.Generate(ask(request, temperature=0.0), timeout=120))[-1].done

    assert capped.finish_reason == pb.FINISH_REASON_LENGTH and capped.usage.completion_tokens == 5
    assert full.finish_reason == pb.FINISH_REASON_CONTEXT_LIMIT, full
    assert full.usage.prompt_tokens + full.usage.completion_tokens >= 255

