"""The KV-cache estimate against what the real llama-server allocates (issue #4).

For SmolLM2 and for tiny random-weight GGUFs that llama.cpp's own
test-llama-archs writes per architecture, llama-server is started at two
context lengths and two slot counts and its cache summary lines are compared
with our estimate. The issue asks for 1% or 1 MiB; the synthetic caches are a
few MiB, so we hold every part to the log's own rounding (0.01 MiB) and the
cell, layer and stream counts to equality.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from kv_fixtures import (
    ServerMemory,
    archs_tool,
    server_memory,
    synthetic_model,
    write_synthetic_models,
)

from llamagate.adapters.engine_discovery import find_llama_server
from llamagate.adapters.gguf_inspector import GgufInspector
from llamagate.domain.gpus import MIB
from llamagate.domain.kv_cache import KvEstimate, kv_cache_bytes
from llamagate.domain.model_shape import ModelShape, shape_from_hyperparameters

pytestmark = pytest.mark.engine

SETTINGS = [(3000, 1), (3000, 3), (8192, 1), (8192, 3)]  # (-c, --parallel): 3000 is not a multiple of 256
SYNTHETIC = [
    "gemma3", "gpt-oss", "cohere2",  # sliding-window attention
    "deepseek2", "deepseek32", "glm-dsa", "kimi-linear", "kimi-k3",  # MLA (+ DSA indexer, + KDA recurrent)
    "qwen35", "qwen3next", "nemotron_h", "jamba", "falcon-h1", "granitehybrid", "lfm2", "minimax-01",  # hybrids
    "mamba2", "llama", "dream",  # no memory at all
]
NOT_WRITTEN = ["rwkv7"]  # reported with test-llama-archs' reason, never skipped silently
LOG_ROUNDING_MIB = 0.006  # "%7.2f MiB" rounds to 0.005, plus float32 noise


@pytest.fixture(scope="session")
def llama_server(cache_dir) -> Path:
    return find_llama_server(os.environ, cache_dir)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    tool = archs_tool()
    if tool is None:
        pytest.fail("test-llama-archs is not built; run `llamagate engine install --test-tools` (./dev does)")
    out = tmp_path_factory.mktemp("synthetic-gguf")
    return out, write_synthetic_models(tool, SYNTHETIC + NOT_WRITTEN, out)


def shape_of(path: Path) -> ModelShape:
    """What the service plans with: the inspector's one scan, then the domain's shape."""
    facts = GgufInspector().inspect(str(path))
    return shape_from_hyperparameters(facts.hyperparameters, facts.architecture)


def assert_close(label: str, ours_bytes: int, printed_mib: float) -> None:
    assert abs(ours_bytes / MIB - printed_mib) <= LOG_ROUNDING_MIB, (
        f"{label}: we estimate {ours_bytes / MIB:.4f} MiB, llama-server allocated {printed_mib:.2f} MiB")


def assert_matches(est: KvEstimate, mem: ServerMemory, where: str) -> None:
    """Every cache llama-server printed, part by part, against the estimate."""
    if not mem.kv and not mem.recurrent and not (est.total_bytes == 0 and "n_slots" in mem.log):
        pytest.fail(f"{where}: llama-server printed no cache sizes; its log ends:\n{mem.log[-3000:]}")
    expected = {"main": (est.k_bytes, est.v_bytes, est.cells, est.kv_layers)}
    if est.swa_cells:
        swa = (est.swa_k_bytes, est.swa_v_bytes, est.swa_cells, est.swa_layers)
        expected = {"non-SWA": expected["main"], "SWA": swa}
    if est.indexer_bytes:
        expected["indexer"] = (est.indexer_bytes, 0, est.cells, None)
    if not mem.kv:
        assert est.kv_bytes == 0, f"{where}: llama-server has no KV cache, we estimate {est.kv_bytes} bytes"
    for line in mem.kv:
        assert line.role in expected, f"{where}: llama-server built a {line.role} cache we did not predict"
        k, v, cells, layers = expected[line.role]
        assert (line.cells, line.streams) == (cells, est.streams), f"{where}: {line.role} cells/streams"
        assert layers is None or line.layers == layers, f"{where}: {line.role} layer count"
        assert_close(f"{where} {line.role} K", k, line.k_mib)
        assert_close(f"{where} {line.role} V", v, line.v_mib)
    assert len(mem.recurrent) == (1 if est.recurrent_layers else 0), f"{where}: recurrent memory"
    for rs in mem.recurrent:
        assert rs.cells == est.recurrent_rows, f"{where}: recurrent rows"
        assert_close(f"{where} R", est.r_bytes, rs.r_mib)
        assert_close(f"{where} S", est.s_bytes, rs.s_mib)
    printed = sum(line.k_mib + line.v_mib for line in mem.kv) + sum(rs.r_mib + rs.s_mib for rs in mem.recurrent)
    assert abs(est.total_bytes / MIB - printed) <= max(0.01 * printed, 1.0)  # the issue's own bar


@pytest.mark.parametrize("arch", SYNTHETIC + NOT_WRITTEN)
def test_the_estimate_matches_llama_server_for_a_synthetic_model_of_each_architecture(arch, synthetic, llama_server):
    out, logs = synthetic
    model = synthetic_model(out, arch)
    if model is None:
        said = [line for line in logs[arch].splitlines() if arch in line and ("unsupported" in line or "rror" in line)]
        pytest.xfail(f"llama.cpp's test-llama-archs writes no {arch} GGUF (its arch_supported() excludes it"
                     f"{': ' + said[-1].strip() if said else ''}), so llama-server cannot be asked")
    shape = shape_of(model)
    for context, parallel in SETTINGS:
        mem = server_memory(llama_server, model, context=context, parallel=parallel)
        est = kv_cache_bytes(shape, context_length=context, parallel=parallel)
        assert_matches(est, mem, f"{arch} -c {context} -np {parallel}")


@pytest.mark.parametrize(("context", "parallel"), SETTINGS)
def test_the_estimate_matches_llama_server_for_smollm2(context, parallel, smollm2_path, llama_server):
    shape = shape_of(smollm2_path)
    mem = server_memory(llama_server, smollm2_path, context=context, parallel=parallel)
    assert_matches(kv_cache_bytes(shape, context_length=context, parallel=parallel), mem, f"SmolLM2 -c {context}")


@pytest.mark.parametrize("cache_type", ["q8_0", "q4_0", "iq4_nl", "bf16"])
def test_a_quantized_or_unified_cache_matches_llama_server(cache_type, smollm2_path, synthetic, llama_server):
    extra = ("--cache-type-k", cache_type, "--cache-type-v", cache_type, "--kv-unified")
    for model in (smollm2_path, synthetic_model(synthetic[0], "gemma3")):
        mem = server_memory(llama_server, model, context=4096, parallel=2, extra=extra)
        est = kv_cache_bytes(shape_of(model), context_length=4096, parallel=2, unified=True,
                             cache_type_k=cache_type, cache_type_v=cache_type)
        assert_matches(est, mem, f"{model.name} {cache_type} unified")


def test_a_window_wider_than_the_slot_context_caps_the_swa_cache_at_the_context(synthetic, llama_server, tmp_path):
    """min(context, window x slots + ubatch): rewrite the synthetic Gemma-3's 32-token window to 2000."""
    from gguf import GGUFReader

    model = tmp_path / "gemma3-wide-window.gguf"
    shutil.copy(synthetic_model(synthetic[0], "gemma3"), model)
    field = GGUFReader(model, "r+").fields["gemma3.attention.sliding_window"]
    field.parts[field.data[0]][0] = 2000
    for context, parallel in ((2048, 1), (8192, 2)):  # capped at 2048 cells; 2000 + 512 -> 2560 cells
        mem = server_memory(llama_server, model, context=context, parallel=parallel)
        est = kv_cache_bytes(shape_of(model), context_length=context, parallel=parallel)
        assert est.swa_cells == (2048 if context == 2048 else 2560)
        assert_matches(est, mem, f"gemma3 window 2000 -c {context} -np {parallel}")


def test_llama_server_too_gives_three_slots_of_1024_more_cache_than_four(smollm2_path, llama_server):
    """Per-slot caches pad each slot to 256 cells: 1024 / 3 -> 512 each, 1024 / 4 -> 256 each."""
    shape = shape_of(smollm2_path)
    for parallel, cells in ((3, 512), (4, 256)):
        mem = server_memory(llama_server, smollm2_path, context=1024, parallel=parallel)
        est = kv_cache_bytes(shape, context_length=1024, parallel=parallel)
        assert est.cells == mem.kv[0].cells == cells
        assert_matches(est, mem, f"SmolLM2 -c 1024 -np {parallel}")
