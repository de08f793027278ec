"""How fast a gone client frees llama-server's slot, and how fast a dead or
frozen llama-server comes back (issue 8), against llama-server used plainly
(its default batch, a client that closes the stream) in the same run:

  1. cancel after the first token;
  2. cancel during a ~4,100-token prompt, early (0.3 s), midway (10 s) and
     late (25 s; the prompt takes ~35 s at batch 32 on 2 cores), when one
     decode of a long context is slowest;
  3. a 200 ms deadline on that prompt;
  4. SIGKILL mid-stream: until the client hears UNAVAILABLE, until READY again;
  5. SIGSTOP: until health says NOT_SERVING, until READY again.

"Slot free" is read from llama-server's /slots, polled every 10 ms.
Targets: the slot free within 1 s of every cancel and deadline; UNAVAILABLE
within 1 s of SIGKILL; NOT_SERVING within 5 s of SIGSTOP.

    .venv/bin/python bench/cancel_recovery.py [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time

import grpc
import httpx
from generate_overhead import LONG_PROMPT, Child, bare_start, judge, load, stop, with_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llamagate.server.app import SERVICE_NAME
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

TARGET_FREE_S = 1.0
TARGET_UNAVAILABLE_S = 1.0
TARGET_NOT_SERVING_S = 5.0
STORY = "Write a very long story about a llama."


async def until(predicate, timeout: float = 120.0, every: float = 0.01) -> float:
    """Seconds until ``await predicate()`` holds."""
    start = time.perf_counter()
    while not await predicate():
        if time.perf_counter() - start > timeout:
            raise SystemExit("timed out waiting")
        await asyncio.sleep(every)
    return time.perf_counter() - start


def busy(http: httpx.AsyncClient):
    async def check() -> bool:
        return any(s["is_processing"] for s in (await http.get("/slots")).json())
    return check


def free(http: httpx.AsyncClient):
    async def check() -> bool:
        return not await busy(http)()
    return check


def request(text: str, max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.Message(role=pb.ROLE_USER, text=text)],
                              sampling=pb.Sampling(max_tokens=max_tokens))


async def ours_cancel(stub, http, text: str, after_s: float | None, max_tokens: int) -> float:
    """Cancel a Generate ``after_s`` into it (None: after the first token); seconds until the slot is free."""
    call = stub.Generate(request(text, max_tokens))
    if after_s is None:
        await call.read()
    else:
        await until(busy(http))
        await asyncio.sleep(after_s)
    call.cancel()
    return await until(free(http))


async def plain_cancel(http, text: str, after_s: float | None, max_tokens: int) -> float:
    """The same against llama-server used plainly: default batch, no progress chunks, the stream closed."""
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "stream": True}

    async def consume() -> None:
        async with http.stream("POST", "/v1/chat/completions", json=body, headers={"Connection": "close"}) as r:
            async for line in r.aiter_lines():
                if after_s is None and '"content":"' in line:
                    return

    task = asyncio.create_task(consume())
    if after_s is None:
        await task
    else:
        await until(busy(http))
        await asyncio.sleep(after_s)
        task.cancel()
    return await until(free(http))


_fresh = iter(range(1 << 30))


def fresh(text: str) -> str:
    return f"{next(_fresh)} {text}"


async def deadline(stub, http) -> float:
    start = time.perf_counter()
    try:
        await stub.Generate(request(fresh(LONG_PROMPT), 8), timeout=0.2).read()
        raise SystemExit("the deadline did not end the call")
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    await until(free(http))
    return time.perf_counter() - start - 0.2


async def cancels(stub, model, rounds: int) -> list[str]:
    _, info = await load(stub, model, context_length=8192)
    child = Child(info.pid)
    argv = child.argv
    batch = argv[argv.index("--batch-size") + 1] if "--batch-size" in argv else "default"
    _, plain_process, plain_url = await bare_start(with_port(argv, 0, drop_batch=True), child.env)
    key = {"Authorization": f"Bearer {child.env['LLAMA_API_KEY']}"}
    missed = []
    try:
        async with child.client() as ours_http, httpx.AsyncClient(base_url=plain_url, headers=key,
                                                                  timeout=600) as plain_http:
            cases = [("after the first token", STORY, None, 2000)] + [
                (f"{at:g} s into the prompt", LONG_PROMPT, at, 8) for at in (0.3, 10.0, 25.0)]
            for label, text, at, n in cases:
                # A fresh prompt each time: none may reuse what another left in the cache.
                ours = [await ours_cancel(stub, ours_http, fresh(text), at, n) for _ in range(rounds)]
                plain = await plain_cancel(plain_http, fresh(text), at, n)
                worst = max(ours)
                baseline = (f"{plain:.2f} s, {plain / worst:.1f}x longer" if plain > 0.05
                            else "it had already processed the whole prompt")
                print(f"cancel {label}: slot free after {statistics.median(ours):.2f} s (worst {worst:.2f} s, "
                      f"batch {batch}); llama-server used plainly: {baseline}", flush=True)
                if worst > TARGET_FREE_S:
                    missed.append(f"cancel {label} freed the slot after {worst:.2f} s")
            times = [await deadline(stub, ours_http) for _ in range(rounds)]
            print(f"200 ms deadline: DEADLINE_EXCEEDED, slot free {max(times):.2f} s after the deadline (worst)",
                  flush=True)
            if max(times) > TARGET_FREE_S:
                missed.append(f"the slot was free {max(times):.2f} s after a deadline")
    finally:
        stop(plain_process)
    return missed


async def recovery(stub, health, model) -> list[str]:
    missed = []
    check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)

    async def ready_again(old_pid: int) -> bool:
        status = await stub.GetStatus(pb.GetStatusRequest()).model
        return status.state == pb.MODEL_STATE_READY and status.pid not in (0, old_pid)

    _, info = await load(stub, model, context_length=2048)
    call = stub.Generate(request(STORY, 1500))
    await call.read()
    start = time.perf_counter()
    os.kill(info.pid, signal.SIGKILL)
    try:
        while await call.read() != grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    heard = time.perf_counter() - start
    back = heard + await until(lambda: ready_again(info.pid), every=0.02)
    print(f"SIGKILL mid-stream: UNAVAILABLE after {heard * 1000:.0f} ms, READY again after {back:.2f} s", flush=True)
    if heard > TARGET_UNAVAILABLE_S:
        missed.append(f"UNAVAILABLE {heard:.2f} s after SIGKILL")

    _, info = await load(stub, model, context_length=2048)
    start = time.perf_counter()
    os.kill(info.pid, signal.SIGSTOP)

    async def not_serving() -> bool:
        return (await health.Check(check)).status == health_pb2.HealthCheckResponse.NOT_SERVING

    down = await until(not_serving, every=0.02)
    back = down + await until(lambda: ready_again(info.pid), every=0.02)
    print(f"SIGSTOP: NOT_SERVING after {down:.2f} s, READY again after {back:.2f} s", flush=True)
    if down > TARGET_NOT_SERVING_S:
        missed.append(f"NOT_SERVING {down:.2f} s after SIGSTOP")
    return missed


async def run(address: str, model, rounds: int) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.LlamaGateServiceStub(channel)
        missed = await cancels(stub, model, rounds)
        missed += await recovery(stub, health_pb2_grpc.HealthStub(channel), model)
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    return judge(lambda address, model: run(address, model, args.rounds), check=args.check)


if __name__ == "__main__":
    sys.exit(main())
