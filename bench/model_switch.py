"""What serving several models costs (issue 12), measured in one run, round by
round interleaved (these machines are noisy: only ratios taken side by side
mean something):

  1. on demand: a Generate naming a configured model that is not resident,
     until its first token, against a bare start of llama-server with the
     very same command line plus one streamed request to it;
  2. resident: the first-token time of a model with another one loaded
     beside it, against a service holding that model alone.

Targets: the on-demand load within 1.10x the bare start; the resident model's
first token no slower than alone (median within 2 ms or 5%).

    .venv/bin/python bench/model_switch.py [--rounds 8] [--check]

The last line is the verdict; ``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from generate_overhead import Child, bare_start, free_port, stop

from llamagate.adapters.default_model import ensure_default_model
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

TARGET_ON_DEMAND = 1.10
TARGET_RESIDENT_MS = 2.0
TARGET_RESIDENT_RATIO = 1.05
PROMPT = "Say hello."
CONFIG = """
[[models]]
id = "resident"
path = "{model}"
context_length = 1024
load_at_start = true

[[models]]
id = "switch"
path = "{model}"
context_length = 1024
"""


def serve(*args: str) -> tuple[subprocess.Popen, str]:
    """``llamagate serve`` on a free port, once it listens (its start-up models loading)."""
    llamagate = Path(sys.executable).with_name("llamagate")
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen([str(llamagate), "serve", "--listen", address, *args],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if "listening" in line:
            return process, address
    raise SystemExit(f"llamagate serve ended (code {process.wait()})")


def request(model: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=[pb.Message(role=pb.ROLE_USER, text=PROMPT)],
                              sampling=pb.Sampling(max_tokens=4, temperature=0), model=model)


async def first_token(stub: pb_grpc.LlamaGateServiceStub, model: str) -> float:
    """Seconds from the call to its first content. The stream is read to its
    end, so no decoding is left running to slow the next measurement."""
    start = time.perf_counter()
    elapsed = None
    async for event in stub.Generate(request(model), timeout=300):
        if elapsed is None and event.WhichOneof("event") == "content_delta":
            elapsed = time.perf_counter() - start
    if elapsed is None:
        raise SystemExit(f"{model} answered no content")
    return elapsed


async def ready(stub: pb_grpc.LlamaGateServiceStub, model: str) -> pb.ModelInfo:
    for _ in range(6000):
        info = (await stub.GetStatus(pb.GetStatusRequest(model=model))).model
        if info.state == pb.MODEL_STATE_READY:
            return info
        await asyncio.sleep(0.01)
    raise SystemExit(f"{model} never became ready")


async def bare_first_token(argv: list[str], env: dict[str, str]) -> float:
    """Spawn to first streamed token of a bare llama-server with the same command line."""
    start = time.perf_counter()
    _, process, url = await bare_start(argv, env)
    try:
        body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, "temperature": 0, "stream": True}
        headers = {"Authorization": f"Bearer {env['LLAMA_API_KEY']}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as http:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        delta = json.loads(line[6:])["choices"][0]["delta"]
                        if delta.get("content"):
                            return time.perf_counter() - start
        raise SystemExit("the bare llama-server answered no content")
    finally:
        stop(process)


async def main(rounds: int) -> bool:
    model = ensure_default_model(Settings.from_env({}).cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "models.toml"
        config.write_text(CONFIG.format(model=model))
        several, several_at = serve("--config", str(config), "--no-model")
        alone, alone_at = serve("--model", str(model), "--ctx", "1024")
        try:
            return await measure(several_at, alone_at, rounds)
        finally:
            stop(several)
            stop(alone)


async def measure(several_at: str, alone_at: str, rounds: int) -> bool:
    async with grpc.aio.insecure_channel(several_at) as a, grpc.aio.insecure_channel(alone_at) as b:
        several, alone = pb_grpc.LlamaGateServiceStub(a), pb_grpc.LlamaGateServiceStub(b)
        await ready(several, "resident")
        await ready(alone, "")
        await first_token(several, "switch")  # once, to learn the child's command line
        child = Child((await ready(several, "switch")).pid)
        argv, env = child.argv, child.env
        await several.UnloadModel(pb.UnloadModelRequest(model="switch"))
        on_demand, bare, resident, single = [], [], [], []
        for _ in range(rounds):
            on_demand.append(await first_token(several, "switch"))
            await several.UnloadModel(pb.UnloadModelRequest(model="switch"))
            bare.append(await bare_first_token(argv, env))
            resident.append(await first_token(several, "resident"))
            single.append(await first_token(alone, ""))
    return report(on_demand, bare, resident, single)


def report(on_demand: list[float], bare: list[float], resident: list[float], single: list[float]) -> bool:
    med = statistics.median
    switch_ratio = med(on_demand) / med(bare)
    print(f"on demand  {med(on_demand) * 1000:8.1f} ms median to first token (load included), "
          f"bare llama-server start + request {med(bare) * 1000:8.1f} ms: {switch_ratio:.3f}x "
          f"(target <= {TARGET_ON_DEMAND:.2f}x)")
    delta_ms = (med(resident) - med(single)) * 1000
    resident_ratio = med(resident) / med(single)
    print(f"resident   {med(resident) * 1000:8.1f} ms median first token beside another model, "
          f"alone {med(single) * 1000:8.1f} ms: {resident_ratio:.3f}x, {delta_ms:+.1f} ms "
          f"(target within {TARGET_RESIDENT_MS:.0f} ms or {TARGET_RESIDENT_RATIO:.2f}x)")
    ok_switch = switch_ratio <= TARGET_ON_DEMAND
    ok_resident = delta_ms <= TARGET_RESIDENT_MS or resident_ratio <= TARGET_RESIDENT_RATIO
    verdict = "PASS" if ok_switch and ok_resident else "FAIL"
    print(f"{verdict}: on-demand load {switch_ratio:.3f}x the bare start (target {TARGET_ON_DEMAND:.2f}x); "
          f"resident first token {resident_ratio:.3f}x alone ({delta_ms:+.1f} ms)")
    return verdict == "PASS"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    passed = asyncio.run(main(args.rounds))
    sys.exit(0 if passed or not args.check else 1)
