"""Replicas behind gRPC's client-side load balancing (issue 15).

Every answer names its replica (``x-llamagate-replica``, server/replica.py).
Two real ``llamagate serve`` processes on loopback, and a grpcio channel with
``round_robin`` and health checking on the service's readiness name: a
replica whose model is not ready gets no Generate, a ready one gets its share,
a draining one finishes its streams while new calls go to the other, and a
killed one fails only the streams it held.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import psutil
import pytest
from conftest import RunningService
from e2e import NOT_SERVING, SERVING, ask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st
from processes import gone
from test_cli import free_port
from test_shutdown import NO_END, watch_health

from llamagate.server.replica import REPLICA_KEY, SETTING, ReplicaIdentity, ReplicaSettings, default_identity
from llamagate.server.request_id import REQUEST_ID_KEY
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

READINESS = "llamagate.v1.LlamaGateService"  # SERVING while a model is ready (server/app.py)
MODEL = "smollm2"
PARALLEL = 2
THREADS = 1  # two replicas on one small machine
CTX = 256 * PARALLEL
TOKENS = 48  # a stream's length: long enough to be in flight when a replica is signalled
# The client side documented in the README: round_robin over the replicas, each
# one's readiness watched over grpc.health.v1, and a retry of a call that never
# reached a replica (UNAVAILABLE before any answer: a stream already answering
# is never retried).
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": READINESS},
    "methodConfig": [{
        "name": [{"service": READINESS}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})


# -- the id itself ------------------------------------------------------------------


@given(st.integers(1, 65535))
def test_by_default_a_replica_is_its_hostname_and_port(port):
    assert default_identity(f"0.0.0.0:{port}", "node-7", 41) == f"node-7:{port}"
    assert default_identity(f"[::1]:{port}", "node-7", 41) == f"node-7:{port}"


@pytest.mark.parametrize("address", ["127.0.0.1:0", "unix:/run/llamagate.sock"])
def test_without_a_port_of_its_own_a_replica_is_its_hostname_and_pid(address):
    assert default_identity(address, "node-7", 41) == "node-7-41"


@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128))
def test_a_replica_id_of_visible_ascii_is_taken_as_given(given_id):
    settings = ReplicaSettings.from_env({SETTING: given_id})
    assert settings.identity("127.0.0.1:50051") == given_id


@pytest.mark.parametrize("given_id", ["two words", "é", "x" * 129, "tab\there"])
def test_a_replica_id_that_is_no_metadata_value_names_the_variable(given_id):
    with pytest.raises(ValueError, match=SETTING):
        Settings.from_env({SETTING: given_id})


def test_every_answer_names_the_replica_unary_streaming_and_errors_and_generate_sends_headers_once():
    service = RunningService(Settings.from_env({**os.environ, SETTING: "replica-a"}))
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = pb_grpc.LlamaGateServiceStub(channel)
            _, call = stub.GetStatus.with_call(pb.GetStatusRequest(), timeout=30)
            assert replicas_in(call.initial_metadata()) == replicas_in(call.trailing_metadata()) == ["replica-a"]
            stream = stub.Generate(ask("hi"), timeout=30)  # no model: an error after Generate's headers
            with pytest.raises(grpc.RpcError) as failed:
                list(stream)
            assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            headers = failed.value.initial_metadata()
            assert [key for key, _ in headers] == [REQUEST_ID_KEY, REPLICA_KEY]  # one set of headers, merged
            assert replicas_in(headers) == replicas_in(failed.value.trailing_metadata()) == ["replica-a"]
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as unknown:  # an error before any answer: in the trailers only
                health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            assert replicas_in(unknown.value.trailing_metadata()) == ["replica-a"]
            watch = health.Watch(health_pb2.HealthCheckRequest(service=READINESS), timeout=30)
            assert next(watch).status == NOT_SERVING  # a stream written through its context: headers too
            assert replicas_in(watch.initial_metadata()) == ["replica-a"]
            watch.cancel()
    finally:
        service.close()


def test_the_replica_interceptor_keeps_each_handler_shape():
    """gRPC runs an async generator and a coroutine differently (a stream that
    yields, one that writes to its context): the stamped one must be the same kind."""
    async def generator(request, context):
        yield request

    async def coroutine(request, context):
        return request

    async def continuation(details):
        return grpc.method_handlers_generic_handler("s", {
            "Yields": grpc.unary_stream_rpc_method_handler(generator),
            "Writes": grpc.unary_stream_rpc_method_handler(coroutine),
        }).service(details)

    def handler(method: str):
        details = SimpleNamespace(method=f"/s/{method}", invocation_metadata=())  # what gRPC passes
        return asyncio.run(ReplicaIdentity("r").intercept_service(continuation, details)).unary_stream

    assert inspect.isasyncgenfunction(handler("Yields"))
    assert inspect.iscoroutinefunction(handler("Writes"))


# -- two real replicas ---------------------------------------------------------------


class Replica:
    """``llamagate serve --config FILE`` on a loopback port, its output kept; up once its model is ready,
    or once it listens when the file loads nothing at start (``loads=False``)."""

    def __init__(self, config: Path, loads: bool = True, **env: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.id = f"{socket.gethostname()}:{self.port}"  # the default id: HOSTNAME:PORT
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llamagate.server.cli", "serve", "--listen", self.address, "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
        self.lines: list[str] = []
        self._up: Future[None] = Future()  # listening, and with a model its model ready
        self._loads = loads
        self._engines: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._up.result(timeout=120)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            up = line.startswith("model ") and " ready" in line if self._loads else line.startswith("llamagate listening")
            if up and not self._up.done():
                self._up.set_result(None)
        if not self._up.done():
            self._up.set_exception(AssertionError(f"serve ended before it was up: {self.lines}"))

    def logged(self, request_id: str) -> bool:
        return any(f"generate {request_id}:" in line for line in self.lines)

    def line_of(self, text: str) -> int:
        """Where ``text`` first appears in its output (the log's order is the order things happened)."""
        return next(n for n, line in enumerate(self.lines) if text in line)

    def exit_code(self) -> int:
        """Once it has exited, and all it wrote is read."""
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=30)
        return code

    def kill(self) -> None:
        """SIGKILL: no drain, its connections reset (its llama-server dies with it: PR_SET_PDEATHSIG)."""
        self._engines |= _engines(self.process.pid)
        self.process.kill()

    def end(self) -> None:
        self._engines |= _engines(self.process.pid)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        for pid in self._engines:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def _engines(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True) if p.name() == "llama-server"}
    except psutil.NoSuchProcess:
        return set()


@pytest.fixture(scope="module")
def config(llama_cpp_tree, smollm2_path, tmp_path_factory) -> Path:
    """Each replica's own config file: the model it loads at start."""
    path = tmp_path_factory.mktemp("replica") / "replica.toml"
    path.write_text(replica_toml(smollm2_path, at_start=True))
    return path


@pytest.fixture(scope="module")
def lazy_config(llama_cpp_tree, smollm2_path, tmp_path_factory) -> Path:
    """The same model, loaded only when an admin asks this replica (LoadModel naming its id)."""
    path = tmp_path_factory.mktemp("replica") / "replica-lazy.toml"
    path.write_text(replica_toml(smollm2_path, at_start=False))
    return path


def replica_toml(model: Path, at_start: bool) -> str:
    """One thread per llama-server: two replicas share this small machine's
    CPUs without llama.cpp's spinning threads starving each other."""
    return (f'[[models]]\nid = "{MODEL}"\npath = "{model}"\ncontext_length = {CTX}\nparallel = {PARALLEL}\n'
            f"threads = {THREADS}\nload_at_start = {str(at_start).lower()}\non_demand = false\n")


@pytest.fixture(scope="module")
def first(config):
    """The replica that stays up for the whole module, SmolLM2 ready."""
    replica = Replica(config)
    yield replica
    replica.end()


def balanced(*replicas: Replica) -> grpc.Channel:
    """One channel over every replica: ``ipv4:HOST:PORT,HOST:PORT``, as the README shows."""
    target = "ipv4:" + ",".join(replica.address for replica in replicas)
    return grpc.insecure_channel(target, options=[("grpc.service_config", SERVICE_CONFIG)])


def replicas_in(metadata) -> list[str]:
    return [value for key, value in metadata or () if key == REPLICA_KEY]


class Answer:
    """One Generate: the replica its headers and its trailers named, how it ended, the tokens it streamed."""

    def __init__(self, stub: pb_grpc.LlamaGateServiceStub, tokens: int = 4, started: threading.Semaphore | None = None):
        request = ask("Count to a thousand.", max_tokens=tokens, temperature=0)
        request.sampling.logit_bias.extend(NO_END)  # every stream runs its max_tokens
        call = stub.Generate(request, timeout=300, wait_for_ready=True)
        self.tokens, self.outcome, self.trailer = 0, "ended without done", ""
        self.request_id = self.replica = ""
        try:
            for event in call:
                if not self.replica:
                    headers = dict(call.initial_metadata())
                    self.replica, self.request_id = headers[REPLICA_KEY], headers[REQUEST_ID_KEY]
                if event.WhichOneof("event") == "content_delta":
                    self.tokens += 1
                    if self.tokens == 1 and started:
                        started.release()
                if event.WhichOneof("event") == "done":
                    self.outcome = "done"
            self.trailer = "".join(replicas_in(call.trailing_metadata()))
        except grpc.RpcError as error:
            self.outcome = error.code().name
            self.replica = self.replica or "".join(replicas_in(error.trailing_metadata()))  # "" from a dead one
        finally:
            if self.tokens == 0 and started:
                started.release()


class Streams:
    """``count`` long Generates at once, each on its own thread."""

    def __init__(self, channel: grpc.Channel, count: int) -> None:
        stub = pb_grpc.LlamaGateServiceStub(channel)
        self._started = threading.Semaphore(0)
        self._count = count
        self._pool = ThreadPoolExecutor(count)
        self._answers = [self._pool.submit(Answer, stub, TOKENS, self._started) for _ in range(count)]

    def started(self) -> None:
        """Once each stream has its first token (or ended without one)."""
        for _ in range(self._count):
            assert self._started.acquire(timeout=120)

    def answers(self) -> list[Answer]:
        answers = [answer.result(timeout=300) for answer in self._answers]
        self._pool.shutdown()
        return answers


def answer_until_both(stub, a: Replica, b: Replica, most: int = 200) -> Counter[str]:
    """Short Generates until both replicas have answered one (bounded: each is a few tokens)."""
    seen: Counter[str] = Counter()
    for _ in range(most):
        seen[Answer(stub).replica] += 1
        if seen[a.id] and seen[b.id]:
            break
    return seen


@pytest.mark.engine
def test_a_replica_without_a_ready_model_gets_no_generate_and_once_ready_both_do(first, lazy_config):
    second = Replica(lazy_config, loads=False)
    try:
        with balanced(first, second) as channel:
            stub = pb_grpc.LlamaGateServiceStub(channel)
            answers = [Answer(stub) for _ in range(8)]
            assert {(answer.replica, answer.outcome) for answer in answers} == {(first.id, "done")}
            assert not any(second.logged(answer.request_id) for answer in answers)  # none even reached it
            # an admin RPC goes to the replica's own address (a balanced one lands on either), naming a
            # model of its config file: `llamagate load --as smollm2 --address REPLICA`
            with grpc.insecure_channel(second.address) as direct:
                loading = pb_grpc.LlamaGateServiceStub(direct).LoadModel(pb.LoadModelRequest(model=MODEL), timeout=300)
                assert [event.phase for event in loading][-1] == pb.LOAD_PHASE_READY
            seen = answer_until_both(stub, first, second)
            assert seen[first.id] and seen[second.id], seen
            later = Counter(Answer(stub).replica for _ in range(8))
            assert set(later) == {first.id, second.id}, later  # round_robin: both keep getting calls
    finally:
        second.end()


@pytest.mark.engine
def test_every_event_of_a_stream_comes_from_the_replica_its_headers_name(first, config):
    second = Replica(config)
    try:
        with balanced(first, second) as channel:
            assert answer_until_both(pb_grpc.LlamaGateServiceStub(channel), first, second)[second.id]
            answers = Streams(channel, 2 * PARALLEL).answers()
        by_id = {first.id: first, second.id: second}
        assert {answer.replica for answer in answers} == set(by_id)
        for answer in answers:
            assert (answer.outcome, answer.tokens, answer.trailer) == ("done", TOKENS, answer.replica)
            other = second if answer.replica == first.id else first
            assert by_id[answer.replica].logged(answer.request_id) and not other.logged(answer.request_id)
    finally:
        second.end()


@pytest.mark.engine
def test_a_draining_replica_finishes_its_streams_while_new_calls_go_to_the_other(first, config):
    second = Replica(config, LLAMAGATE_SHUTDOWN_GRACE_S="120")  # room for its streams on a slow machine
    try:
        with balanced(first, second) as channel, grpc.insecure_channel(second.address) as watching:
            stub = pb_grpc.LlamaGateServiceStub(channel)
            assert answer_until_both(stub, first, second)[second.id]
            watch, statuses = watch_health(watching, READINESS)
            streams = Streams(channel, 2 * PARALLEL)
            streams.started()
            second.process.send_signal(signal.SIGTERM)
            assert watch.result(timeout=60) == grpc.StatusCode.OK and statuses == [SERVING, NOT_SERVING]
            during = [Answer(stub) for _ in range(6)]  # new calls, as the drain begins
            answers = streams.answers()
        assert {(answer.replica, answer.outcome) for answer in during} == {(first.id, "done")}
        assert {answer.replica for answer in answers} == {first.id, second.id}
        assert {(answer.outcome, answer.tokens) for answer in answers} == {("done", TOKENS)}
        assert second.exit_code() == 0
        # its streams ended after it began to drain: its log says so, in order
        drained = [answer.request_id for answer in answers if answer.replica == second.id]
        assert all(second.line_of("stopping:") < second.line_of(f"generate {rid}: length") for rid in drained)
    finally:
        second.end()


@pytest.mark.engine
def test_a_killed_replica_fails_only_its_own_streams_and_later_calls_go_to_the_survivor(first, config):
    second = Replica(config)
    try:
        with balanced(first, second) as channel:
            stub = pb_grpc.LlamaGateServiceStub(channel)
            assert answer_until_both(stub, first, second)[second.id]
            streams = Streams(channel, 2 * PARALLEL)
            streams.started()
            second.kill()
            # at once: a call the channel still sends to the dead replica fails before any answer, and its
            # retry policy tries it again; wait_for_ready waits out a moment with no replica ready
            later = [Answer(stub) for _ in range(6)]
            answers = streams.answers()
        outcomes = Counter((answer.replica, answer.outcome) for answer in answers)
        assert set(outcomes) == {(first.id, "done"), (second.id, "UNAVAILABLE")}, outcomes
        assert all(answer.tokens < TOKENS for answer in answers if answer.replica == second.id)
        assert {(answer.replica, answer.outcome) for answer in later} == {(first.id, "done")}
    finally:
        second.end()

