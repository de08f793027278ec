"""What llamagate costs on top of llama-server (issue 8), measured in one run
against llama-server itself, interleaved round by round (these machines are
noisy: only differences and ratios taken side by side mean something):

  1. time to first token and tokens per second, 1 stream and 8 concurrent
     streams: Generate against the same request sent straight to the same
     llama-server child over HTTP (a long-lived client, as llamagate's own);
  2. LoadModel until READY against a bare start of llama-server with the very
     same command line until /health answers 200 (polled every millisecond);
  3. prompt processing (a ~4,100-token prompt, no cache) of a child with the
     batch llamagate chose against one with llama-server's default batch.

Targets: first-token overhead under 2 ms at the median with 1 stream and
under 5 ms with 8; throughput at least 98% of direct; LoadModel at most
1.10x the bare start; prompt processing at least 90% of the default's speed.

    .venv/bin/python bench/generate_overhead.py [--rounds 40] [--check]

The last line is the verdict; ``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psutil

from llamagate.adapters import paths
from llamagate.adapters.llama_http import chat_body
from llamagate.domain.capabilities import Capabilities
from llamagate.domain.generation import chat_call
from llamagate.server import convert
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

TARGET_TTFT_1_MS = 2.0
TARGET_TTFT_8_MS = 5.0
TARGET_THROUGHPUT = 0.98
TARGET_LOAD = 1.10
TARGET_PROMPT = 0.90

COUNTING = "Count from 1 to 200, one number per line."
LONG_PROMPT = " ".join(f"w{i}x{i % 7}" for i in range(700))  # ~4,100 SmolLM2 tokens
SHORT_PROMPT = " ".join(f"w{i}x{i % 7}" for i in range(170))  # ~1,000


@dataclass
class Stream:
    ttft_s: float
    tokens: int
    first: float
    last: float
    engine_rate: float = 0.0  # llama-server's own predicted_per_second


# ------------------------------------------------------------------ the two ways to stream


async def direct(http: httpx.AsyncClient, body: dict) -> Stream:
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    # As llamagate does: llama-server closes a connection after each stream.
    async with http.stream("POST", "/v1/chat/completions", json=body, headers={"Connection": "close"}) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            payload = json.loads(line[6:])
            choices = payload.get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                last = time.perf_counter()
                first = first or last
                tokens += 1
            engine_rate = (payload.get("timings") or {}).get("predicted_per_second", 0.0)
    return Stream(first - start, tokens, first, last, engine_rate)


async def generate(stub: pb_grpc.LlamaGateServiceStub, request: pb.GenerateRequest) -> Stream:
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    engine_rate = 0.0
    async for event in stub.Generate(request):
        if event.WhichOneof("event") == "content_delta":
            last = time.perf_counter()
            first = first or last
            tokens += 1
        elif event.WhichOneof("event") == "done":
            engine_rate = event.done.timings.predicted_per_second
    return Stream(first - start, tokens, first, last, engine_rate)


def rate(streams: list[Stream]) -> float:
    """Tokens per second over the span all streams were producing."""
    span = max(s.last for s in streams) - min(s.first for s in streams)
    return sum(s.tokens - 1 for s in streams) / span if span > 0 else 0.0


async def side_by_side(rounds: int, n: int, ways: dict[str, Callable[[], Awaitable[Stream]]]) -> dict[str, list[tuple[float, float, float]]]:
    """Each round runs ``n`` concurrent streams one way, then the other (the
    order alternating); returns per way the rounds' median TTFT and rate."""
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
    names = list(ways)
    for r in range(rounds + 2):  # two warm-up rounds
        for name in names if r % 2 == 0 else reversed(names):
            streams = await asyncio.gather(*(ways[name]() for _ in range(n)))
            if r >= 2:
                results[name].append((statistics.median(s.ttft_s for s in streams), rate(streams),
                                      statistics.median(s.engine_rate for s in streams)))
    return results


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(settings: Settings) -> tuple[subprocess.Popen, str]:
    llamagate = Path(sys.executable).with_name("llamagate")
    port = free_port()
    process = subprocess.Popen([str(llamagate), "serve", "--no-model", "--listen", f"127.0.0.1:{port}"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening" not in line:
        process.kill()
        raise SystemExit(f"llamagate serve did not start: {line!r}")
    return process, f"127.0.0.1:{port}"


@dataclass
class Child:
    """A llama-server child of the service: how to reach it and how it was started."""

    pid: int

    @property
    def argv(self) -> list[str]:
        return psutil.Process(self.pid).cmdline()

    @property
    def env(self) -> dict[str, str]:
        return psutil.Process(self.pid).environ()

    @property
    def url(self) -> str:
        argv = self.argv
        return f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"

    def client(self) -> httpx.AsyncClient:
        key = self.env["LLAMA_API_KEY"]
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=600)


def with_port(argv: list[str], port: int, *, drop_batch: bool = False) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if drop_batch and arg in ("--batch-size", "--ubatch-size"):
            skip = True
            continue
        out.append(str(port) if i > 0 and argv[i - 1] == "--port" else arg)
    return out


async def bare_start(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.Popen, str]:
    """Seconds from spawn to /health 200, the running process and its URL."""
    port = free_port()
    start = time.perf_counter()
    # Popen only forks and execs (no wait): the clock starts as llamagate's own spawn does.
    process = subprocess.Popen(with_port(argv, port), env=env,  # noqa: ASYNC220
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        while True:
            try:
                if (await http.get("/health")).status_code == 200:
                    return time.perf_counter() - start, process, f"http://127.0.0.1:{port}"
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise SystemExit(f"bare llama-server exited with {process.returncode}")
            await asyncio.sleep(0.001)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def load(stub: pb_grpc.LlamaGateServiceStub, model: Path, **options) -> tuple[float, pb.ModelInfo]:
    start = time.perf_counter()
    async for event in stub.LoadModel(pb.LoadModelRequest(path=str(model), options=pb.LoadOptions(**options))):
        if event.phase == pb.LOAD_PHASE_READY:
            return time.perf_counter() - start, event.model
    raise SystemExit("LoadModel ended without READY")


async def prompt_speed(http: httpx.AsyncClient, text: str) -> float:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 1, "cache_prompt": False}
    response = await http.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return float(response.json()["timings"]["prompt_per_second"])


# ------------------------------------------------------------------ the phases


async def streams_phase(stub, model: Path, rounds: int) -> dict[str, float]:
    _, info = await load(stub, model, context_length=8192, parallel=8)
    request = pb.GenerateRequest(messages=[pb.Message(role=pb.ROLE_USER, text=COUNTING)],
                                 sampling=pb.Sampling(max_tokens=96, temperature=0.0, seed=1))
    body = chat_body(chat_call(convert.generate_request(request), Capabilities(), info.context_length))
    out: dict[str, float] = {}
    async with Child(info.pid).client() as http:
        for n in (1, 8):
            got = await side_by_side(rounds, n, {"direct": lambda: direct(http, body),
                                                 "generate": lambda: generate(stub, request)})
            d, g = got["direct"], got["generate"]
            ttft_d = statistics.median(r[0] for r in d) * 1000
            ttft_g = statistics.median(r[0] for r in g) * 1000
            overhead = statistics.median((rg[0] - rd[0]) * 1000 for rd, rg in zip(d, g))
            rate_d, rate_g = statistics.median(r[1] for r in d), statistics.median(r[1] for r in g)
            ratio = statistics.median(rg[1] / rd[1] for rd, rg in zip(d, g) if rd[1] > 0)
            engine = statistics.median(rg[2] / rd[2] for rd, rg in zip(d, g) if rd[2] > 0)
            print(f"   llama-server's own tokens/s, Generate against direct: {engine:.3f}")
            print(f"{n} stream(s): first token direct {ttft_d:.1f} ms, through Generate {ttft_g:.1f} ms, "
                  f"overhead {overhead:+.2f} ms; tokens/s direct {rate_d:.1f}, Generate {rate_g:.1f}, "
                  f"ratio {ratio:.3f} (medians of {rounds} paired rounds)", flush=True)
            out[f"ttft{n}"], out[f"rate{n}"] = overhead, ratio
    return out


async def load_phase(stub, model: Path, rounds: int) -> float:
    _, info = await load(stub, model, context_length=8192, parallel=8)
    argv, env = Child(info.pid).argv, Child(info.pid).env
    bare, service = [], []
    for r in range(rounds + 1):  # one warm-up round
        for way in ("bare", "load") if r % 2 == 0 else ("load", "bare"):
            if way == "bare":
                seconds, process, _ = await bare_start(argv, env)
                stop(process)
                (bare if r else []).append(seconds)
            else:
                await stub.UnloadModel(pb.UnloadModelRequest())
                seconds, _ = await load(stub, model, context_length=8192, parallel=8)
                (service if r else []).append(seconds)
    b, s = statistics.median(bare) * 1000, statistics.median(service) * 1000
    print(f"start: bare llama-server to /health {b:.0f} ms, LoadModel to READY {s:.0f} ms, ratio {s / b:.3f}",
          flush=True)
    return s / b


async def prompt_phase(stub, model: Path, rounds: int) -> float:
    _, info = await load(stub, model, context_length=8192, parallel=1)
    child = Child(info.pid)
    argv = child.argv
    batch = argv[argv.index("--batch-size") + 1] if "--batch-size" in argv else "default"
    _, default, default_url = await bare_start(with_port(argv, 0, drop_batch=True), child.env)
    ratio = 0.0
    try:
        key = {"Authorization": f"Bearer {child.env['LLAMA_API_KEY']}"}
        async with child.client() as ours, httpx.AsyncClient(base_url=default_url, headers=key, timeout=600) as theirs:
            for label, text in (("~1,000", SHORT_PROMPT), ("~4,100", LONG_PROMPT)):
                speeds: dict[str, list[float]] = {"ours": [], "default": []}
                for r in range(rounds):
                    for name in ("ours", "default") if r % 2 == 0 else ("default", "ours"):
                        speeds[name].append(await prompt_speed(ours if name == "ours" else theirs, text))
                o, d = statistics.median(speeds["ours"]), statistics.median(speeds["default"])
                ratio = o / d
                print(f"prompt of {label} tokens: batch {batch} {o:.0f} tokens/s, llama-server's default batch "
                      f"{d:.0f} tokens/s, ratio {ratio:.3f}", flush=True)
    finally:
        stop(default)
    return ratio  # the long prompt's: where the batch matters for cancels


async def run(address: str, model: Path, args: argparse.Namespace) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LlamaGateServiceStub(channel)
        streams = await streams_phase(stub, model, args.rounds)
        if args.streams_only:
            raise SystemExit("verdict: none (--streams-only measures phase 1 alone)")
        load_ratio = await load_phase(stub, model, args.load_rounds)
        prompt_ratio = await prompt_phase(stub, model, args.prompt_rounds)
    missed = []
    if streams["ttft1"] >= TARGET_TTFT_1_MS:
        missed.append(f"first-token overhead with 1 stream {streams['ttft1']:.2f} ms >= {TARGET_TTFT_1_MS} ms")
    if streams["ttft8"] >= TARGET_TTFT_8_MS:
        missed.append(f"first-token overhead with 8 streams {streams['ttft8']:.2f} ms >= {TARGET_TTFT_8_MS} ms")
    for n in (1, 8):
        if streams[f"rate{n}"] < TARGET_THROUGHPUT:
            missed.append(f"throughput with {n} stream(s) {streams[f'rate{n}']:.3f} < {TARGET_THROUGHPUT}")
    if load_ratio > TARGET_LOAD:
        missed.append(f"LoadModel {load_ratio:.3f}x the bare start > {TARGET_LOAD}x")
    if prompt_ratio < TARGET_PROMPT:
        missed.append(f"prompt processing {prompt_ratio:.3f} of the default's speed < {TARGET_PROMPT}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--load-rounds", type=int, default=6)
    parser.add_argument("--prompt-rounds", type=int, default=3)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--streams-only", action="store_true", help="phase 1 only (no verdict)")
    args = parser.parse_args()
    return judge(lambda address, model: run(address, model, args), check=args.check)


def judge(work: Callable[[str, Path], Awaitable[list[str]]], *, check: bool) -> int:
    """Run ``work(address, model)`` against a fresh ``llamagate serve``; print
    the verdict from the targets it missed (the last line)."""
    settings = Settings.from_env(os.environ)
    service, address = start_service(settings)
    try:
        missed = asyncio.run(work(address, paths.default_model_path(settings.cache_dir)))
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
    print("verdict: " + ("PASS: every target met" if not missed else "FAIL: " + "; ".join(missed)))
    return 1 if missed and check else 0


if __name__ == "__main__":
    sys.exit(main())
