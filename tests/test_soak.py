"""A soak (issue 13): 64 concurrent clients for 5 minutes against ``llamagate
serve`` and the real llama-server, mixing Generate, cancels, deadlines and
status calls, on loopback only.

Bounded in time (LLAMAGATE_SOAK_S, default 300 s) and in count (64 clients).
Asserted: no error but RESOURCE_EXHAUSTED and the clients' own CANCELLED /
DEADLINE_EXCEEDED; no hung stream (every call has a deadline far above its
work); the service's resident memory and open file descriptors flat after the
warm-up (growth under 5%); the metrics scraped at the end agree with what the
clients counted.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import httpx
import psutil
import pytest
from e2e import ask
from test_cli import free_port

from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

pytestmark = pytest.mark.engine

CLIENTS = 64
DURATION_S = float(os.environ.get("LLAMAGATE_SOAK_S", "300"))
WARM_UP_S = min(60.0, DURATION_S / 5)
CALL_DEADLINE_S = 120.0  # far above any call's work: reaching it means a hung stream
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED,
           grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    generate: Counter[str] = field(default_factory=Counter)  # by status code name
    status: Counter[str] = field(default_factory=Counter)
    tokens: int = 0  # completion tokens of the streams that finished
    unexpected: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)

    def count(self, kind: Counter[str], code: grpc.StatusCode, what: str, *, own_deadline: bool = False) -> None:
        with self.lock:
            kind[code.name] += 1
            if code not in ALLOWED:
                self.unexpected.append(f"{what}: {code.name}")
            elif code is grpc.StatusCode.DEADLINE_EXCEEDED and not own_deadline:
                self.hung.append(what)


def client(stub: pb_grpc.LlamaGateServiceStub, tally: Tally, until: float, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        action = rng.random()
        if action < 0.15:
            code = _call(lambda: stub.ListModels(pb.ListModelsRequest(), timeout=CALL_DEADLINE_S)
                         if rng.random() < 0.5 else stub.GetStatus(pb.GetStatusRequest(), timeout=CALL_DEADLINE_S))
            tally.count(tally.status, code, "status")
        elif action < 0.35:  # cancelled after the first event
            call = stub.Generate(ask(f"Tell me about llama {seed}.", max_tokens=64), timeout=CALL_DEADLINE_S)
            code = _cancel_after_first(call)
            tally.count(tally.generate, code, "cancelled generate")
        elif action < 0.45:  # a deadline the client chose short on purpose
            call = stub.Generate(ask("Count to fifty.", max_tokens=128), timeout=rng.uniform(0.05, 0.5))
            code, _ = _drain(call)
            tally.count(tally.generate, code, "short-deadline generate", own_deadline=True)
        else:
            call = stub.Generate(ask(f"Say hello {seed}.", max_tokens=rng.randint(4, 24)), timeout=CALL_DEADLINE_S)
            code, tokens = _drain(call)
            tally.count(tally.generate, code, "generate")
            with tally.lock:
                tally.tokens += tokens
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            time.sleep(rng.uniform(0.05, 0.3))  # as a client honouring RetryInfo would


def _call(make) -> grpc.StatusCode:
    try:
        make()
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def _drain(call) -> tuple[grpc.StatusCode, int]:
    tokens = 0
    try:
        for event in call:
            if event.WhichOneof("event") == "done":
                tokens = event.done.usage.completion_tokens
        return grpc.StatusCode.OK, tokens
    except grpc.RpcError as error:
        return error.code(), 0


def _cancel_after_first(call) -> grpc.StatusCode:
    try:
        next(call)
        call.cancel()
        for _ in call:
            pass
        return grpc.StatusCode.OK  # it ended before the cancel took
    except StopIteration:
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def sample(process: psutil.Process, samples: list[tuple[float, int, int]], stop: threading.Event) -> None:
    while not stop.wait(2.0):
        samples.append((time.monotonic(), process.memory_info().rss, process.num_fds()))


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? ([0-9.eE+-]+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[1] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match[2])
    return total


def settled_metrics(url: str, calls: int) -> str:
    """The metrics once every Generate the clients saw end is recorded: a
    client hears a stream's end a moment before the service books it."""
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(url, timeout=10).text
        if metric_total(text, METRIC_RPCS, grpc_method="Generate") >= calls or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_64_clients_for_minutes_leave_the_service_flat_and_counted(smollm2_path):
    address, metrics_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    serve = subprocess.Popen(
        [sys.executable, "-m", "llamagate.server.cli", "serve", "--listen", address, "--ctx", "2048",
         "--parallel", "4", "--metrics", metrics_address],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "LLAMAGATE_QUEUE_SIZE": "16"})
    try:
        assert serve.stdout is not None
        for line in serve.stdout:
            if line.startswith("model ") and " ready" in line:
                break
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.LlamaGateServiceStub(channel)
        process = psutil.Process(serve.pid)
        tally, samples, stop = Tally(), [], threading.Event()
        sampler = threading.Thread(target=sample, args=(process, samples, stop), daemon=True)
        sampler.start()
        until = time.monotonic() + DURATION_S
        threads = [threading.Thread(target=client, args=(stub, tally, until, i)) for i in range(CLIENTS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=DURATION_S + CALL_DEADLINE_S + 30)
        stop.set()
        assert not any(t.is_alive() for t in threads), "a client never returned"
        metrics = settled_metrics(f"http://{metrics_address}/metrics", sum(tally.generate.values()))

        assert not tally.unexpected, Counter(tally.unexpected).most_common(5)
        assert not tally.hung, f"{len(tally.hung)} calls ran into the {CALL_DEADLINE_S:.0f} s deadline"
        assert tally.generate["OK"] > CLIENTS and tally.tokens > 0
        warm = [s for s in samples if started + WARM_UP_S <= s[0] < started + 2 * WARM_UP_S]
        late = [s for s in samples if s[0] >= started + DURATION_S - WARM_UP_S]
        rss_growth = statistics.median(s[1] for s in late) / statistics.median(s[1] for s in warm)
        fd_growth = statistics.median(s[2] for s in late) / statistics.median(s[2] for s in warm)
        print(f"soak: {dict(tally.generate)} generate, {dict(tally.status)} status, {tally.tokens} tokens; "
              f"RSS x{rss_growth:.3f}, fds x{fd_growth:.3f}")
        assert rss_growth < 1.05 and fd_growth < 1.05
        def served(*codes: str) -> float:
            return sum(metric_total(metrics, METRIC_RPCS, grpc_method="Generate", grpc_code=c) for c in codes)

        # the service decides refusals; a cancel or a client's deadline can race the stream's own end
        assert served("RESOURCE_EXHAUSTED") == tally.generate["RESOURCE_EXHAUSTED"]
        ended = ("OK", "CANCELLED", "DEADLINE_EXCEEDED")
        # a client's own short deadline may pass before the call reaches the service: never booked there
        assert (tally.generate["OK"] + tally.generate["CANCELLED"] <= served(*ended)
                <= sum(tally.generate[c] for c in ended))
        assert served("OK") >= tally.generate["OK"]
        assert metric_total(metrics, METRIC_TOKENS) >= tally.tokens  # it counts cancelled streams' tokens too
    finally:
        serve.terminate()
        serve.wait(timeout=60)


METRIC_RPCS = "grpc_server_handled_total"
METRIC_TOKENS = "llamagate_generated_tokens_total"
