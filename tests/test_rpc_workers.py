"""Models over llama.cpp RPC workers, with the real parts: two ggml-rpc-server workers on loopback,
llama-server, the service and SmolLM2 (issue 15).

The model's workers run as the README says to run them, `llamagate rpc-worker` (SIGPIPE ignored).
The probe is shown safe against a plain ggml-rpc-server, which dies of SIGPIPE when a client hangs
up before its reply: the first two tests measure that, and that `llamagate rpc-worker` survives it.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import RunningService
from e2e import ask, error_details, wait_until
from processes import gone_within

from llamagate.adapters.engine_discovery import find_llama_server, find_rpc_server
from llamagate.adapters.rpc_probe import RpcProbe
from llamagate.domain.rpc_workers import WorkerState
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

pytestmark = pytest.mark.engine

HELLO = bytes([14]) + struct.pack("<Q", 24) + bytes(24)  # command, size, 24 capability bytes
SIGPIPE_BIT = 1 << (signal.SIGPIPE - 1)  # in /proc/PID/status SigIgn
GREEDY = {"temperature": 0.0, "seed": 7, "max_tokens": 48}
END_TOKENS = (0, 2)  # SmolLM2's <|endoftext|> and <|im_end|>: banned, a reply never ends on its own


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A ggml-rpc-server on a loopback port: `llamagate rpc-worker` (safe) or the bare binary (plain)."""

    def __init__(self, port: int, *, plain: bool = False, binary: Path | None = None) -> None:
        self.port, self.plain, self.binary = port, plain, binary
        self.address = f"127.0.0.1:{port}"
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        # subprocess restores SIGPIPE to its default in the child: the plain worker is as a shell starts it
        argv = ([str(self.binary), "--host", "127.0.0.1", "--port", str(self.port)] if self.plain else
                [sys.executable, "-m", "llamagate.server.cli", "rpc-worker", "--port", str(self.port)])
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:  # connect and hang up before sending anything: a worker takes that as a client gone
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return process
            except OSError:
                time.sleep(0.05)
        process.kill()
        raise AssertionError(f"ggml-rpc-server on {self.address} did not start")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        self.process = self._start()


def held(worker: Worker) -> socket.socket:
    """A client that took the worker (HELLO answered) and keeps it: the worker is busy."""
    holder = socket.create_connection(("127.0.0.1", worker.port), timeout=5)
    holder.sendall(HELLO)
    answer = b""
    while len(answer) < 36:  # size (8), then major, minor, patch, padding and 24 capability bytes
        answer += holder.recv(36 - len(answer))
    assert answer[8:11] == bytes([7, 0, 0])
    return holder


def hang_up_early(worker: Worker) -> None:
    """What a careless probe does: HELLO, then close as soon as no answer comes."""
    with socket.create_connection(("127.0.0.1", worker.port), timeout=5) as probe:
        probe.sendall(HELLO)
        probe.settimeout(0.3)
        with pytest.raises(TimeoutError):
            probe.recv(1)


@pytest.fixture(scope="module")
def rpc_binary(cache_dir) -> Path:
    return find_rpc_server(os.environ, cache_dir)


@pytest.fixture(scope="module")
def workers(rpc_binary, llama_cpp_tree):
    pair = [Worker(free_port()), Worker(free_port())]
    yield pair
    for worker in pair:
        worker.kill()


@pytest.fixture(scope="module")
def plain_worker(rpc_binary):
    worker = Worker(free_port(), plain=True, binary=rpc_binary)
    yield worker
    worker.kill()


@pytest.fixture(scope="module")
def rpc_service(workers, plain_worker, smollm2_path):
    allowed = ",".join(w.address for w in [*workers, plain_worker])
    settings = Settings.from_env({**os.environ, "LLAMAGATE_RPC_WORKERS": allowed,
                                  "LLAMAGATE_RESTART_BACKOFF_MS": "200", "LLAMAGATE_RESTART_MAX": "20"})
    running = RunningService(settings)
    yield running
    running.close()


@pytest.fixture(scope="module")
def rpc_stub(rpc_service):
    with grpc.insecure_channel(rpc_service.address) as channel:
        yield pb_grpc.LlamaGateServiceStub(channel)


def load(stub, path: Path, model: str, *workers: str) -> list[pb.LoadModelResponse]:
    request = pb.LoadModelRequest(path=str(path), model=model, options=pb.LoadOptions(rpc_workers=list(workers)))
    return list(stub.LoadModel(request, timeout=300))


def greedy_text(stub, model: str, max_tokens: int = GREEDY["max_tokens"]) -> tuple[str, float]:
    request = ask("Tell me about the history of the printing press.", **{**GREEDY, "max_tokens": max_tokens})
    request.model = model
    text, started = "", time.monotonic()
    for event in stub.Generate(request, timeout=120):
        text += event.content_delta
    return text, time.monotonic() - started


# ---------------------------------------------------------------- the worker and SIGPIPE (measured)


def test_a_plain_worker_dies_when_a_client_hangs_up_before_its_reply(plain_worker, rpc_binary):
    doomed = Worker(free_port(), plain=True, binary=rpc_binary)
    try:
        holder = held(doomed)
        hang_up_early(doomed)  # queued behind the holder: the worker has not read it yet
        holder.close()  # the worker takes the queued HELLO, answers a closed socket: SIGPIPE
        assert gone_within(doomed.process.pid, 10)
        assert doomed.process.wait() == -signal.SIGPIPE
    finally:
        doomed.kill()


def test_llamagate_rpc_worker_ignores_sigpipe_and_survives_the_same(workers, rpc_binary):
    worker = workers[0]
    status = Path(f"/proc/{worker.process.pid}/status").read_text()
    ignored = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    assert ignored & SIGPIPE_BIT
    assert Path(f"/proc/{worker.process.pid}/exe").resolve() == rpc_binary.resolve()  # exec'd: no Python between
    holder = held(worker)
    hang_up_early(worker)
    holder.close()
    time.sleep(0.5)  # the worker takes the queued HELLO now; ignored, SIGPIPE is only an EPIPE
    assert worker.alive() and RpcProbe().probe(worker.address, 5).state is WorkerState.READY


def test_the_rpc_worker_is_the_one_built_beside_llama_server(rpc_binary, cache_dir):
    assert rpc_binary.parent == find_llama_server(os.environ, cache_dir).parent


# ---------------------------------------------------------------- planning and loading over workers


def test_plan_model_lists_the_workers_their_devices_and_memory_as_ram(rpc_stub, workers, smollm2_path):
    addresses = [w.address for w in workers]
    plan = rpc_stub.PlanModel(pb.PlanModelRequest(path=str(smollm2_path),
                                                  options=pb.LoadOptions(rpc_workers=addresses))).plan

    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # what ggml's CPU device reports
    assert [w.address for w in plan.rpc_workers] == addresses
    for worker in plan.rpc_workers:
        assert worker.state == pb.RPC_WORKER_STATE_READY and worker.protocol == "7.0.0"
        (device,) = worker.devices
        assert device.free_bytes == device.total_bytes == ram and device.memory_is_ram
        assert device.weights_bytes * 2 == pytest.approx(plan.weights_bytes, abs=2)  # split in halves
    assert plan.fits and plan.offload_all and list(plan.gpus) == []
    assert any("a CPU worker's figure is its RAM" in reason for reason in plan.reasons)


def llamagate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llamagate.server.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_the_commands_plan_and_load_over_workers(rpc_service, rpc_stub, workers, smollm2_path):
    flags = [arg for w in workers for arg in ("--rpc-worker", w.address)]
    allowed = ",".join(w.address for w in workers)

    planned = llamagate("plan", str(smollm2_path), *flags, LLAMAGATE_RPC_WORKERS=allowed)
    assert planned.returncode == 0, planned.stderr
    rows = [line for line in planned.stdout.splitlines() if line.startswith("127.0.0.1:")]
    assert [row.split()[0] for row in rows] == [f"{w.address}/0" for w in workers]
    assert all("its RAM" in row for row in rows)
    refused = llamagate("plan", str(smollm2_path), *flags)  # this shell's service lists no worker
    assert refused.returncode == 1 and "LLAMAGATE_RPC_WORKERS" in refused.stderr

    loaded = llamagate("load", str(smollm2_path), "--as", "cli-split", *flags, "--address", rpc_service.address)
    try:
        assert loaded.returncode == 0, loaded.stderr
        assert "cli-split ready" in loaded.stdout and "on RPC workers" in loaded.stderr
    finally:
        rpc_stub.UnloadModel(pb.UnloadModelRequest(model="cli-split"))


def test_workers_the_operator_did_not_list_or_malformed_ones_are_refused(rpc_stub, smollm2_path):
    def plan(*workers: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            rpc_stub.PlanModel(pb.PlanModelRequest(path=str(smollm2_path),
                                                   options=pb.LoadOptions(rpc_workers=list(workers))))
        return caught.value

    denied = plan("127.0.0.1:1")
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "LLAMAGATE_RPC_WORKERS" in denied.details()
    malformed = plan("127.0.0.1")
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = error_details(malformed)["BadRequest"].field_violations[0]
    assert violation.field == "options.rpc_workers[0]" and "host:port" in violation.description


def test_a_model_over_two_workers_generates_the_local_greedy_text(rpc_stub, workers, smollm2_path):
    load(rpc_stub, smollm2_path, "local")
    local, local_s = greedy_text(rpc_stub, "local")
    rpc_stub.UnloadModel(pb.UnloadModelRequest(model="local"))
    events = load(rpc_stub, smollm2_path, "split", *[w.address for w in workers])
    split, split_s = greedy_text(rpc_stub, "split")

    assert split == local and len(local) > 40
    planning = next(e for e in events if e.phase == pb.LOAD_PHASE_PLANNING)
    assert [w.address for w in planning.plan.rpc_workers] == [w.address for w in workers]
    assert "on RPC workers" in planning.message
    print(f"\n48 greedy tokens: local {local_s:.2f} s, over two loopback workers {split_s:.2f} s")


def test_a_probe_of_a_busy_worker_says_busy_in_time_and_the_worker_lives_on(rpc_stub, plain_worker, smollm2_path):
    load(rpc_stub, smollm2_path, "held", plain_worker.address)  # our llama-server now holds the plain worker
    probe = RpcProbe()

    report = probe.probe(plain_worker.address, 0.5)  # it returns: BUSY says its 0.5 s passed unanswered

    assert report.state is WorkerState.BUSY and "within 0.5 s" in report.detail
    assert probe.waiting(plain_worker.address)  # its HELLO waits in the worker's queue, the socket kept open
    assert greedy_text(rpc_stub, "held", max_tokens=4)[0]  # the model still runs on it
    rpc_stub.UnloadModel(pb.UnloadModelRequest(model="held"))  # the worker is free: it answers the queued HELLO
    assert wait_until(lambda: not probe.waiting(plain_worker.address), timeout=30)
    time.sleep(0.3)
    assert plain_worker.alive()  # a plain worker, SIGPIPE not ignored: the probe hung up only after its reply
    assert RpcProbe().probe(plain_worker.address, 5).state is WorkerState.READY


def test_a_killed_worker_fails_the_model_naming_it_and_the_restart_policy_brings_it_back(
        rpc_stub, workers, smollm2_path):
    lost = workers[1]
    expected, _ = greedy_text(rpc_stub, "split")
    flowing, failure = threading.Event(), {}

    def endless_generation() -> None:
        request = ask("Tell me about the history of the printing press.", max_tokens=4000,
                      logit_bias=[pb.LogitBias(token=t, bias=-100) for t in END_TOKENS])
        request.model = "split"
        try:
            for n, _ in enumerate(rpc_stub.Generate(request, timeout=120)):
                if n == 5:
                    flowing.set()
        except grpc.RpcError as error:
            failure["error"] = error

    streaming = threading.Thread(target=endless_generation)
    streaming.start()
    assert flowing.wait(60)
    lost.kill()  # mid-generation: llama-server aborts (SIGABRT) when a worker goes
    streaming.join(60)

    error = failure["error"]
    assert error.code() == grpc.StatusCode.UNAVAILABLE and f"RPC worker {lost.address} is unreachable" in error.details()
    assert error_details(error)["ErrorInfo"].metadata["worker"] == lost.address
    status = rpc_stub.GetStatus(pb.GetStatusRequest(model="split")).model
    assert status.state in (pb.MODEL_STATE_FAILED, pb.MODEL_STATE_LOADING)
    assert f"RPC worker {lost.address} is unreachable" in status.last_error
    with pytest.raises(grpc.RpcError) as caught:
        greedy_text(rpc_stub, "split")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and lost.address in caught.value.details()
    assert workers[0].alive()

    lost.restart()  # the same port
    assert wait_until(lambda: rpc_stub.GetStatus(pb.GetStatusRequest(model="split")).model.state
                      == pb.MODEL_STATE_READY, timeout=60)
    assert greedy_text(rpc_stub, "split")[0] == expected
