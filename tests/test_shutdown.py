"""Graceful shutdown of ``llamagate serve``: SIGTERM turns health NOT_SERVING,
refuses new calls, lets the streams in flight finish, stops the children and
exits 0; a second SIGTERM ends what is left with UNAVAILABLE, a code clients
retry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest
from conftest import RunningService
from e2e import NOT_SERVING, SERVING, ask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st
from processes import gone, gone_within
from test_cli import free_port

from llamagate.server.network import DEFAULT_SHUTDOWN_GRACE_S, NetworkSettings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
STREAMS = 8
TOKENS = 32  # each stream's length: with 8 decoding at once, a few seconds on 2 CPUs
NO_END = [pb.LogitBias(token=token, bias=-100) for token in (0, 1, 2)]  # SmolLM2's end tokens: each runs TOKENS


class Serve:
    """``llamagate serve`` with SmolLM2 and a slot per stream, once its model is ready; its output kept."""

    def __init__(self, address: str, **env: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llamagate.server.cli", "serve", "--listen", address, "--ctx", str(256 * STREAMS),
             "--parallel", str(STREAMS)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **env})
        self.lines: list[str] = []
        self._ready: Future[int] = Future()
        threading.Thread(target=self._read, daemon=True).start()
        self.pid = self._ready.result(timeout=120)  # llama-server's

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("model ") and " ready" in line:
                self._ready.set_result(int(line.rsplit("pid", 1)[1]))
        if not self._ready.done():
            self._ready.set_exception(AssertionError(f"serve ended before its model was ready: {self.lines}"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def signal(self, number: int = signal.SIGTERM) -> None:
        self.process.send_signal(number)

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if not gone(self.pid):
            os.kill(self.pid, signal.SIGKILL)


class Streams:
    """STREAMS generations in flight, each on its own thread; ``started`` once each has its first token."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = pb_grpc.LlamaGateServiceStub(channel)
        self._first_tokens = threading.Semaphore(0)  # one release per stream: its first token, or its end
        self._pool = ThreadPoolExecutor(STREAMS)
        self.results: list[Future] = [self._pool.submit(self._run) for _ in range(STREAMS)]

    def _run(self) -> tuple[str, int]:
        """("done", completion tokens), or (the status code's name, tokens seen) when the stream failed."""
        request = ask("Count to a thousand.", max_tokens=TOKENS, temperature=0)
        request.sampling.logit_bias.extend(NO_END)
        seen = 0
        try:
            for event in self._stub.Generate(request, timeout=300):
                if event.WhichOneof("event") == "content_delta":
                    seen += 1
                    if seen == 1:
                        self._first_tokens.release()
                if event.WhichOneof("event") == "done":
                    return "done", event.done.usage.completion_tokens
        except grpc.RpcError as error:
            return error.code().name, seen
        finally:
            if seen == 0:
                self._first_tokens.release()
        return "ended without done", seen

    def started(self) -> None:
        """Once every stream has its first token (or ended without one)."""
        for _ in range(STREAMS):
            assert self._first_tokens.acquire(timeout=120)

    def outcomes(self) -> list[tuple[str, int]]:
        return [result.result(timeout=300) for result in self.results]


def watch_health(channel: grpc.Channel, service: str = "llamagate.v1.LlamaGateService") -> tuple[Future, list[int]]:
    """A Watch of a health name: the statuses it sends, as they come, and how it ended (a status code)."""
    statuses: list[int] = []
    ended: Future[grpc.StatusCode] = Future()
    call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))

    def read() -> None:
        try:
            for reply in call:
                statuses.append(reply.status)
            ended.set_result(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            ended.set_result(error.code())

    threading.Thread(target=read, daemon=True).start()
    return ended, statuses


@given(st.floats(0, 3600))
def test_the_grace_is_read_in_seconds(seconds):
    assert NetworkSettings.from_env({"LLAMAGATE_SHUTDOWN_GRACE_S": repr(seconds)}).shutdown_grace_s == seconds


@pytest.mark.parametrize("text", ["-1", "3601", "nan", "inf", "30s", "1e9"])
def test_a_grace_out_of_range_or_not_a_number_names_the_variable(text):
    with pytest.raises(ValueError, match="LLAMAGATE_SHUTDOWN_GRACE_S"):
        NetworkSettings.from_env({"LLAMAGATE_SHUTDOWN_GRACE_S": text})


def test_the_grace_defaults_to_30_s():
    assert NetworkSettings.from_env({}).shutdown_grace_s == DEFAULT_SHUTDOWN_GRACE_S == 30


def test_a_watch_open_at_shutdown_says_not_serving_and_ends_without_holding_the_drain():
    service = RunningService()
    try:
        with grpc.insecure_channel(service.address) as channel:
            names = ("", "llamagate.v1.LlamaGateService", "no.such.Service")
            watches = [watch_health(channel, name) for name in names]
            assert wait_for(lambda: all(statuses for _, statuses in watches))
            # a grace far longer than service.call waits: a Watch holding the drain fails the test
            service.call(service.app.stop(grace=3600))
            assert [(ended.result(timeout=10), statuses) for ended, statuses in watches] == [
                (grpc.StatusCode.OK, [SERVING, NOT_SERVING]),
                (grpc.StatusCode.OK, [NOT_SERVING]),  # nothing loaded: it never served
                (grpc.StatusCode.OK, [SERVICE_UNKNOWN]),
            ]
    finally:
        service.close()  # the stop again: a no-op once stopped


@pytest.mark.engine
def test_sigterm_lets_the_streams_in_flight_finish_and_exits_0():
    address = f"127.0.0.1:{free_port()}"
    serve = Serve(address, LLAMAGATE_SHUTDOWN_GRACE_S="120")  # the default 30 s, made room for a slow machine
    try:
        with grpc.insecure_channel(address) as channel, grpc.insecure_channel(address) as watching:
            watch, statuses = watch_health(watching)
            streams = Streams(channel)
            streams.started()
            serve.signal()
            assert watch.result(timeout=30) == grpc.StatusCode.OK  # it said NOT_SERVING and ended
            assert statuses == [SERVING, NOT_SERVING]
            assert not any(result.done() for result in streams.results)  # while the streams still ran
            with grpc.insecure_channel(address) as fresh:  # new calls: on a new connection, and on the streams' own
                for talking in (fresh, channel):
                    with pytest.raises(grpc.RpcError) as refused:
                        pb_grpc.LlamaGateServiceStub(talking).GetStatus(pb.GetStatusRequest(), timeout=5)
                    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            outcomes = streams.outcomes()
        assert outcomes == [("done", TOKENS)] * STREAMS
        assert serve.process.wait(timeout=30) == 0
        assert gone_within(serve.pid, 5.0)
    finally:
        serve.end()


@pytest.mark.engine
def test_a_second_sigterm_ends_the_streams_with_unavailable():
    address = f"127.0.0.1:{free_port()}"
    serve = Serve(address)
    try:
        with grpc.insecure_channel(address) as channel:
            streams = Streams(channel)
            streams.started()
            serve.signal()
            # two signals sent at once may reach the process as one: the second goes once the first is handled
            assert wait_for(lambda: serve.said("stopping:"))
            serve.signal()
            outcomes = streams.outcomes()
        assert {code for code, _ in outcomes} == {"UNAVAILABLE"}, outcomes
        assert all(seen < TOKENS for _, seen in outcomes)
        assert serve.process.wait(timeout=30) == 0
        assert gone_within(serve.pid, 5.0)
    finally:
        serve.end()


@pytest.mark.engine
def test_the_end_of_the_grace_period_ends_the_streams_with_unavailable():
    address = f"127.0.0.1:{free_port()}"
    serve = Serve(address, LLAMAGATE_SHUTDOWN_GRACE_S="0.2")
    try:
        with grpc.insecure_channel(address) as channel:
            streams = Streams(channel)
            streams.started()
            serve.signal()
            outcomes = streams.outcomes()
        assert {code for code, _ in outcomes} == {"UNAVAILABLE"}, outcomes
        assert serve.process.wait(timeout=30) == 0
    finally:
        serve.end()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    pause = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        pause.wait(0.02)
    return predicate()
