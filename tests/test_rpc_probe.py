"""The RPC worker probe against scripted workers on loopback: the protocol, its bounds, and that
the worker never writes into a closed socket (a real worker dies of SIGPIPE then: test_rpc_workers.py)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Sequence

import pytest
from e2e import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from llamagate.adapters.rpc_probe import DEVICE_COUNT, GET_DEVICE_MEMORY, HELLO, MAX_DEVICES, MAX_REPLY, RpcProbe
from llamagate.domain.rpc_workers import WorkerDevice, WorkerState

Step = bytes | threading.Event  # bytes are written (b"": hang up), an event is waited for
Answer = Callable[[int, bytes], Sequence[Step] | None]  # (command, payload) -> steps; None: hang up


def framed(payload: bytes) -> bytes:
    return struct.pack("<Q", len(payload)) + payload


def hello(major: int = 7, minor: int = 0, patch: int = 0) -> bytes:
    return framed(bytes([major, minor, patch, 0]) + bytes(24))


def worker_answers(devices: Sequence[tuple[int, int]], version: tuple[int, int, int] = (7, 0, 0)) -> Answer:
    """A well-behaved worker with these (free, total) devices."""
    def answer(command: int, payload: bytes) -> Sequence[Step] | None:
        if command == HELLO:
            return [hello(*version)]
        if command == DEVICE_COUNT:
            return [framed(struct.pack("<I", len(devices)))]
        if command == GET_DEVICE_MEMORY:
            (index,) = struct.unpack("<I", payload)
            return [framed(struct.pack("<QQ", *devices[index]))] if index < len(devices) else None
        return None
    return answer


class ScriptedWorker:
    """One client at a time, like ggml-rpc-server: the next connection waits in the
    listen queue while ``hold`` is clear. Records the commands it read and every
    failed write (a real worker would have died of SIGPIPE at the first)."""

    def __init__(self, answer: Answer, hold: threading.Event | None = None) -> None:
        self.answer, self.hold = answer, hold
        self.server = socket.create_server(("127.0.0.1", 0), backlog=1)
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.commands: list[int] = []
        self.write_errors: list[OSError] = []
        self.conversations = 0  # connections accepted and ended
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.hold is not None:
                self.hold.wait()
            with client:
                self._converse(client)
            self.conversations += 1

    def _converse(self, client: socket.socket) -> None:
        while True:
            head = _read(client, 9)
            if head is None:
                return
            command, size = struct.unpack("<BQ", head)
            payload = _read(client, size) if size else b""
            if payload is None:
                return
            self.commands.append(command)
            steps = self.answer(command, payload)
            if steps is None:
                return
            for step in steps:
                if isinstance(step, threading.Event):
                    step.wait()
                    continue
                if not step:
                    return
                try:
                    client.sendall(step)
                except OSError as error:  # EPIPE/ECONNRESET: SIGPIPE for a worker that does not ignore it
                    self.write_errors.append(error)
                    return

    def close(self) -> None:
        self.server.close()


def _read(client: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = client.recv(n - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


@pytest.fixture
def workers():
    made: list[ScriptedWorker] = []

    def make(answer: Answer, hold: threading.Event | None = None) -> ScriptedWorker:
        made.append(ScriptedWorker(answer, hold))
        return made[-1]

    yield make
    for worker in made:
        if worker.hold is not None:
            worker.hold.set()
        worker.close()


def test_a_worker_reports_its_protocol_devices_and_memory_and_a_cpu_worker_is_flagged_as_ram(workers):
    worker = workers(worker_answers([(3 << 30, 8 << 30), (16 << 30, 16 << 30)]))

    report = RpcProbe().probe(worker.address, 2.0)

    assert report.state is WorkerState.READY and report.protocol == "7.0.0"
    assert report.devices == (WorkerDevice(0, 3 << 30, 8 << 30), WorkerDevice(1, 16 << 30, 16 << 30))
    assert [d.memory_is_ram for d in report.devices] == [False, True]
    assert worker.commands == [HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY, GET_DEVICE_MEMORY]
    assert wait_until(lambda: worker.conversations == 1) and worker.write_errors == []


@settings(max_examples=25)
@given(st.lists(st.tuples(st.integers(0, 2**63), st.integers(0, 2**63)).map(sorted), max_size=MAX_DEVICES))
def test_whatever_devices_a_worker_has_the_probe_reports_exactly_them(devices):
    worker = ScriptedWorker(worker_answers([(free, total) for free, total in devices]))
    try:
        report = RpcProbe().probe(worker.address, 5.0)
    finally:
        worker.close()
    assert report.state is WorkerState.READY
    assert [(d.index, d.free_bytes, d.total_bytes) for d in report.devices] == [
        (i, free, total) for i, (free, total) in enumerate(devices)]


def test_a_busy_worker_is_busy_within_the_timeout_and_its_late_answer_is_read_before_the_probe_hangs_up(workers):
    free = threading.Event()
    worker = workers(worker_answers([(1 << 30, 1 << 30)]), hold=free)
    probe = RpcProbe()

    report = probe.probe(worker.address, 0.3)

    assert report.state is WorkerState.BUSY and "HELLO" in report.detail
    assert probe.waiting(worker.address)
    again = probe.probe(worker.address, 0.3)  # never a second connection queued behind the first
    assert again.state is WorkerState.BUSY and "earlier probe" in again.detail
    free.set()  # the worker's other client went: it takes the queued probe and answers HELLO
    assert wait_until(lambda: not probe.waiting(worker.address))
    assert wait_until(lambda: worker.conversations == 1)
    assert worker.commands == [HELLO] and worker.write_errors == []
    assert probe.probe(worker.address, 2.0).state is WorkerState.READY


def test_another_protocol_version_is_incompatible_and_named():
    worker = ScriptedWorker(worker_answers([(1, 2)], version=(6, 1, 0)))
    try:
        report = RpcProbe().probe(worker.address, 2.0)
        assert wait_until(lambda: worker.conversations == 1)
    finally:
        worker.close()
    assert report.state is WorkerState.INCOMPATIBLE and report.protocol == "6.1.0"
    assert "7.0.x" in report.detail and worker.commands == [HELLO]  # nothing asked of a foreign worker
    assert worker.write_errors == []


def test_a_newer_minor_version_is_refused_as_llama_server_would():
    worker = ScriptedWorker(worker_answers([(1, 2)], version=(7, 1, 0)))
    try:
        assert RpcProbe().probe(worker.address, 2.0).state is WorkerState.INCOMPATIBLE
    finally:
        worker.close()


@pytest.mark.parametrize("reply, why", [
    (framed(bytes([3, 0, 0])), "3 bytes"),  # an old worker's HELLO: major, minor, patch only
    (framed(bytes(40)), "40 bytes"),
])
def test_a_hello_of_the_wrong_size_is_incompatible_and_drained(workers, reply, why):
    worker = workers(lambda command, payload: [reply])

    report = RpcProbe().probe(worker.address, 2.0)

    assert report.state is WorkerState.INCOMPATIBLE and why in report.detail
    assert wait_until(lambda: worker.conversations == 1) and worker.write_errors == []


def test_a_huge_reply_size_is_bounded_before_use(workers):
    worker = workers(lambda command, payload: [struct.pack("<Q", 2**63)])

    report = RpcProbe().probe(worker.address, 0.5)

    assert report.state is WorkerState.INCOMPATIBLE and str(2**63) in report.detail
    assert MAX_REPLY < 2**63


def test_a_huge_device_count_is_refused_without_asking_for_any_device(workers):
    def answer(command: int, payload: bytes) -> Sequence[Step] | None:
        return [hello()] if command == HELLO else [framed(struct.pack("<I", 2**32 - 1))]

    worker = workers(answer)
    report = RpcProbe().probe(worker.address, 2.0)

    assert report.state is WorkerState.INCOMPATIBLE and str(2**32 - 1) in report.detail
    assert wait_until(lambda: worker.conversations == 1)
    assert GET_DEVICE_MEMORY not in worker.commands and worker.write_errors == []


def test_more_free_than_total_memory_is_no_real_device(workers):
    worker = workers(worker_answers([(2, 1)]))
    report = RpcProbe().probe(worker.address, 2.0)
    assert report.state is WorkerState.INCOMPATIBLE and "free of" in report.detail


def test_a_worker_that_hangs_up_mid_reply_is_unreachable(workers):
    worker = workers(lambda command, payload: [hello()[:5], b""])
    report = RpcProbe().probe(worker.address, 2.0)
    assert report.state is WorkerState.UNREACHABLE and "hung up" in report.detail


def test_a_reply_cut_short_is_read_to_its_end_before_the_probe_hangs_up(workers):
    rest = threading.Event()
    whole = hello()
    worker = workers(lambda command, payload: [whole[:12], rest, whole[12:]] if command == HELLO else None)
    probe = RpcProbe()

    report = probe.probe(worker.address, 0.3)

    assert report.state is WorkerState.UNREACHABLE and "stopped answering" in report.detail
    assert probe.waiting(worker.address)  # 24 bytes still owed
    rest.set()
    assert wait_until(lambda: not probe.waiting(worker.address))
    assert wait_until(lambda: worker.conversations == 1) and worker.write_errors == []


def test_nothing_listening_is_unreachable():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
    report = RpcProbe().probe(address, 1.0)
    assert report.state is WorkerState.UNREACHABLE and report.detail
