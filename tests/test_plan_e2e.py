"""Planning with the real parts: the CLI, the PlanModel RPC and LoadModel's plan."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import grpc
import pytest
from kv_fixtures import server_memory

from llamagate.adapters.gpu_probe import probe_gpus
from llamagate.domain.gpus import MIB
from llamagate.v1 import llamagate_pb2 as pb

pytestmark = pytest.mark.engine


def plan_cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "llamagate.server.cli", "plan", *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plan_on_smollm2_with_a_simulated_gpu_prints_the_kv_llama_server_allocates(smollm2_path, cache_dir):
    from llamagate.adapters.engine_discovery import find_llama_server

    table = plan_cli(str(smollm2_path), "--gpus", "0:8000")

    kv_bytes = int(re.search(r"KV cache\s+([\d,]+) bytes", table)[1].replace(",", ""))
    assert re.search(r"context\s+8192 ", table) and "GPU 0 (every layer)" in table
    measured = server_memory(find_llama_server(os.environ, cache_dir), smollm2_path, context=8192, parallel=1).kv_role("main")
    assert measured is not None
    assert abs(kv_bytes / MIB - (measured.k_mib + measured.v_mib)) < 0.01


def test_plan_rejects_a_malformed_gpu_list(smollm2_path):
    done = subprocess.run([sys.executable, "-m", "llamagate.server.cli", "plan", str(smollm2_path), "--gpus", "0=8000"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "INDEX:FREE_MIB" in done.stderr


def test_plan_model_rpc_plans_for_simulated_gpus(stub, smollm2_path):
    request = pb.PlanModelRequest(path=str(smollm2_path), options=pb.LoadOptions(context_length=4096, parallel=2),
                                  gpus=[pb.SimulatedGpu(index=0, free_bytes=8000 * MIB),
                                        pb.SimulatedGpu(index=3, free_bytes=12000 * MIB)])
    plan = stub.PlanModel(request).plan

    assert plan.simulated and plan.fits and plan.offload_all
    assert list(plan.gpus) == [3]  # one GPU is enough: the one with most free memory
    assert plan.context_length == 4096 and plan.native_context_length == 8192
    assert plan.architecture == "llama"
    assert plan.kv.total_bytes == plan.kv.k_bytes + plan.kv.v_bytes > 0
    assert plan.shares[0].weights_bytes == plan.weights_bytes == smollm2_path.stat().st_size
    assert plan.reasons


def test_when_no_simulated_gpu_holds_the_model_the_plan_falls_back_to_fit_on(stub, smollm2_path):
    request = pb.PlanModelRequest(path=str(smollm2_path), gpus=[pb.SimulatedGpu(index=0, free_bytes=50 * MIB)])
    plan = stub.PlanModel(request).plan
    assert not plan.fits and not plan.offload_all and list(plan.gpus) == []
    assert plan.context_length == 4096 and plan.ceiling_context_length == 4096
    assert any("--fit on" in reason for reason in plan.reasons)


def test_plan_model_errors_are_status_codes(stub, smollm2_path, tmp_path):
    with pytest.raises(grpc.RpcError) as caught:
        stub.PlanModel(pb.PlanModelRequest(path=str(tmp_path / "missing.gguf")))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    twice = [pb.SimulatedGpu(index=1, free_bytes=MIB), pb.SimulatedGpu(index=1, free_bytes=MIB)]
    with pytest.raises(grpc.RpcError) as caught:
        stub.PlanModel(pb.PlanModelRequest(path=str(smollm2_path), gpus=twice))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_load_reports_its_plan_and_starts_llama_server_with_it(stub, smollm2_path):
    events = list(stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path),
                                                     options=pb.LoadOptions(parallel=2)), timeout=300))
    planning = next(e for e in events if e.phase == pb.LOAD_PHASE_PLANNING)
    ready = events[-1].model

    assert planning.plan.context_length == ready.context_length == 8192  # automatic: native fits in RAM
    assert planning.plan.kv.total_bytes > 0 and not planning.plan.simulated and planning.plan.fits
    if probe_gpus(os.environ):
        assert list(planning.plan.gpus) and planning.plan.offload_all
    else:  # CI and most dev machines here: no GPU, the plan is for the CPU
        assert list(planning.plan.gpus) == [] and "CPU" in planning.message


def test_a_load_runs_llama_server_with_the_context_its_plan_chose(smollm2_path):
    """On a machine with 250 MiB free, the automatic context is the largest that
    fits, not the native 8192: llama-server's own /slots must show it."""
    from conftest import RunningService
    from fakes import FakeMemory
    from test_service_e2e import engine

    from llamagate.v1 import llamagate_pb2_grpc

    service = RunningService(memory=FakeMemory(host_free=250 * MIB))
    try:
        stub = llamagate_pb2_grpc.LlamaGateServiceStub(grpc.insecure_channel(service.address))
        events = list(stub.LoadModel(pb.LoadModelRequest(path=str(smollm2_path)), timeout=300))
        planned = next(e for e in events if e.phase == pb.LOAD_PHASE_PLANNING).plan.context_length

        running = sum(slot["n_ctx"] for slot in engine(events[-1].model.pid).get("/slots").json())

        assert 4096 <= planned < 8192 and planned % 256 == 0
        assert running == planned == events[-1].model.context_length
    finally:
        service.close()
