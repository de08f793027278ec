"""Hyperparameters: one reader (the Rust scanner), and the bounds of defect 16.

Defect 16: one 4-byte edit of a GGUF header took the service down.
``block_count`` = 16,777,246 kept LoadModel in RESOLVING past a 150 s
deadline (per-layer loops in domain/kv_cache.py ran on), and 2^31-1 grew the
process to 24 GB until the kernel killed it (a per-layer tuple in
domain/model_shape.py). Every hyperparameter now has a bound, checked before
any per-layer work, and a file out of bounds is InvalidModel (gRPC
INVALID_ARGUMENT) naming the key and the value.
"""

from __future__ import annotations

import resource
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from hypothesis import given, settings
from hypothesis import strategies as st

from llamagate.adapters import gguf_inspector, paths
from llamagate.adapters.gguf_inspector import GgufInspector
from llamagate.domain.errors import InvalidModel
from llamagate.domain.hyperparameters import (
    GGUF_KEYS,
    MAX_CONTEXT,
    MAX_EXPERTS,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_WIDTH,
    Hyperparameters,
    check_bounds,
    gguf_key,
)
from llamagate.domain.kv_cache import kv_cache_bytes
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.load_plan import check_plannable, plan_load
from llamagate.domain.model_shape import shape_from_hyperparameters
from llamagate.rust_ext import scan_file

MIB = 1 << 20
NAMES = [f.name for f in fields(Hyperparameters)]
PER_LAYER = {"head_count", "head_count_kv", "feed_forward_length", "recurrent_layers", "indexer_types",
             "expert_used_count"}
# one architecture of each family of model_shape's rules
ARCHS = ["llama", "gemma2", "gemma3", "gemma3n", "gemma4", "llama4", "exaone4", "lfm2", "qwen3next", "qwen35",
         "nemotron_h", "jamba", "falcon-h1", "minimax-01", "glm-dsa", "deepseek2", "deepseek32", "kimi-linear",
         "rwkv7", "mamba2", "bert", "smallthinker", "deepseek4"]


# -- defect 16 on a real file ----------------------------------------------------------------------


@pytest.fixture
def real_gguf(tmp_path: Path, cache_dir: Path) -> Path:
    """A copy of SmolLM2's header (its tensor data left sparse: nothing here reads
    it), or, without the model, a small llama GGUF written by the gguf package."""
    copy = tmp_path / "hostile.gguf"
    smollm2 = paths.default_model_path(cache_dir)
    if smollm2.is_file():
        header_size = scan_file(smollm2)["header_size"]
        with smollm2.open("rb") as source, copy.open("wb") as out:
            out.write(source.read(header_size))
            out.truncate(smollm2.stat().st_size)
    else:
        _write(copy, "llama", block_count=30, embedding_length=576, **{"attention.head_count": 9},
               **{"attention.head_count_kv": 3}, context_length=8192)
    return copy


def _edit_block_count(path: Path, value: int) -> None:
    """The defect's 4-byte edit: llama.block_count's uint32, in place."""
    field = GGUFReader(path, "r+").fields["llama.block_count"]
    assert field.types == [GGUFValueType.UINT32]
    field.parts[field.data[0]][0] = value


@contextmanager
def _bounded_memory(extra: int = 2 << 30) -> Iterator[None]:
    """A regression raises MemoryError here instead of having the kernel kill
    the test run (the 2^31-1 tuple is 17 GB). Linux only; elsewhere a no-op."""
    status = Path("/proc/self/status")
    if not status.is_file():
        yield
        return
    vm_kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_kib * 1024 + extra
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _refusal_and_peak_bytes(path: Path) -> tuple[str, int]:
    """Inspect and plan the file as a LoadModel does; the refusal and the peak of Python allocations."""
    tracemalloc.start()
    try:
        with _bounded_memory(), pytest.raises(InvalidModel) as refused:
            facts = GgufInspector().inspect(str(path))
            check_plannable(facts, LoadOptions())
        with pytest.raises(InvalidModel):
            plan_load(facts, LoadOptions(), [], 16 << 30)
        return str(refused.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_block_count_of_16777246_is_invalid_argument_naming_the_key_before_any_per_layer_work(real_gguf):
    _edit_block_count(real_gguf, 16_777_246)
    message, peak = _refusal_and_peak_bytes(real_gguf)
    assert message == "llama.block_count = 16777246 is out of range: at most 4096 layers"
    assert peak < 8 * MIB  # one per-layer tuple of 16.7M layers alone is 134 MB


def test_a_block_count_of_2_31_minus_1_is_refused_without_allocating(real_gguf):
    _edit_block_count(real_gguf, 2**31 - 1)
    message, peak = _refusal_and_peak_bytes(real_gguf)
    assert message == "llama.block_count = 2147483647 is out of range: at most 4096 layers"
    assert peak < 8 * MIB


def test_the_unedited_file_still_plans(real_gguf):
    facts = GgufInspector().inspect(str(real_gguf))
    result = plan_load(facts, LoadOptions(context_length=4096), [], 16 << 30)
    assert result.kv is not None and result.kv.kv_layers == facts.hyperparameters.block_count


# -- the bounds ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "largest", "unit"), [
    ("block_count", MAX_LAYERS, "layers"),
    ("head_count", MAX_HEADS, "heads"),
    ("embedding_length", MAX_WIDTH, "elements"),
    ("key_length_swa", MAX_WIDTH, "elements"),
    ("expert_count", MAX_EXPERTS, "experts"),
    ("context_length", MAX_CONTEXT, "tokens"),
    ("sliding_window", MAX_CONTEXT, "tokens"),
])
def test_each_bound_admits_its_largest_value_and_refuses_one_more_naming_key_and_value(field, largest, unit):
    check_bounds(Hyperparameters(**{field: largest}), "qwen3")
    with pytest.raises(InvalidModel) as refused:
        check_bounds(Hyperparameters(**{field: largest + 1}), "qwen3")
    assert str(refused.value) == f"{gguf_key(field, 'qwen3')} = {largest + 1} is out of range: at most {largest} {unit}"


@pytest.mark.parametrize(("hp", "message"), [
    (Hyperparameters(head_count_kv=-1), "llama.attention.head_count_kv = -1 is out of range: at least 0"),
    (Hyperparameters(feed_forward_length=(4096, 2**32 - 1)),
     "llama.feed_forward_length[1] = 4294967295 is out of range: at most 1048576 elements"),
    (Hyperparameters(head_count=(8,) * (MAX_LAYERS + 1)),
     "llama.attention.head_count has 4097 values (one per layer), out of range: at most 4096 layers"),
    (Hyperparameters(sliding_window_pattern=(True,) * 5000),
     "llama.attention.sliding_window_pattern has 5000 values (one per layer), out of range: at most 4096 layers"),
    (Hyperparameters(full_attention_interval=0), "llama.full_attention_interval = 0 is out of range: at least 1"),
    (Hyperparameters(block_count=4, nextn_predict_layers=5),
     "llama.nextn_predict_layers = 5 is out of range: at most llama.block_count = 4"),
    (Hyperparameters(file_type=2**32), "general.file_type = 4294967296 is out of range: at most 4294967295"),
])
def test_per_layer_values_negatives_and_cross_checks_are_refused_naming_the_key(hp, message):
    with pytest.raises(InvalidModel) as refused:
        check_bounds(hp, "llama")
    assert str(refused.value) == message


def test_a_full_attention_interval_of_zero_is_refused_rather_than_dividing_by_zero():
    hp = Hyperparameters(block_count=4, embedding_length=256, head_count=4, full_attention_interval=0)
    with pytest.raises(InvalidModel, match="qwen3next.full_attention_interval = 0"):
        shape_from_hyperparameters(hp, "qwen3next")


small = st.integers(0, 70)
hostile = st.one_of(st.integers(-(2**63), -1), st.integers(2**20 + 1, 2**64 - 1))


def _values(name: str, ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    if name in PER_LAYER:
        return ints | st.lists(ints, max_size=70).map(tuple)
    if name == "sliding_window_pattern":
        return ints | st.lists(st.booleans(), max_size=70).map(tuple)
    return ints


@st.composite
def hyperparameters(draw: st.DrawFn) -> Hyperparameters:
    """Plausible values, with up to two hostile ones: out of range, or a per-layer array too long.
    The essentials are mostly there (0 now and then), so that most examples reach the estimate."""
    values = {name: draw(st.none() | _values(name, small)) for name in NAMES}
    values.update(block_count=draw(small), embedding_length=draw(small),
                  nextn_predict_layers=draw(st.none() | st.integers(0, 2)))  # a few appended blocks, as in MTP models
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=2, unique=True)):
        too_long = st.integers(MAX_LAYERS + 1, MAX_LAYERS + 100).map(lambda n: (1,) * n)
        values[name] = draw(_values(name, hostile) | (too_long if name in PER_LAYER else hostile))
    return Hyperparameters(**values)


@settings(max_examples=300)
@given(hyperparameters(), st.sampled_from(ARCHS))
def test_any_hyperparameters_are_refused_by_name_or_planned_with_bounded_per_layer_work(hp, arch):
    try:
        shape = shape_from_hyperparameters(hp, arch)
    except InvalidModel as refused:
        assert str(refused).startswith((f"{arch}.", "general.")) and " out of range: " in str(refused)
        return
    except ValueError:  # no block_count/embedding_length: the planner's "no estimate"
        assert not hp.block_count or not hp.embedding_length
        return
    per_layer = [v for v in vars(shape).values() if isinstance(v, tuple)]
    assert shape.block_count <= MAX_LAYERS and all(len(v) <= MAX_LAYERS for v in per_layer)
    estimate = kv_cache_bytes(shape, context_length=4096, parallel=2)
    assert estimate.kv_layers + estimate.swa_layers <= shape.block_count


# -- one reader: the scanner -----------------------------------------------------------------------


def _write(path: Path, arch: str, **values: Any) -> None:
    """A GGUF of ``ARCH.key = value`` pairs (uint32 scalars, int32 or bool arrays)."""
    writer = GGUFWriter(path, arch)
    for key, value in values.items():
        if isinstance(value, list):
            writer.add_array(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_the_scanner_gives_exactly_the_fields_of_hyperparameters(tmp_path):
    path = tmp_path / "m.gguf"
    _write(path, "llama", block_count=2)
    assert list(scan_file(path)["model"]) == NAMES


@pytest.mark.parametrize("field", NAMES)
def test_each_field_is_read_from_the_key_its_errors_name(field, tmp_path):
    path = tmp_path / "m.gguf"
    key = gguf_key(field, "llama")
    writer = GGUFWriter(path, "llama")
    writer.add_uint32(key, 7)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert scan_file(path)["model"][field] == 7, key
    assert set(GGUF_KEYS) == set(NAMES)


def test_the_inspector_scans_once_and_passes_per_layer_arrays_as_tuples(tmp_path, monkeypatch):
    path = tmp_path / "nemotron.gguf"
    _write(path, "nemotron_h", block_count=4, embedding_length=1024, **{"attention.head_count": 8},
           **{"attention.head_count_kv": [0, 8, 0, 0]}, feed_forward_length=[0, 0, 4096, 0],
           **{"attention.recurrent_layers": [True, False, False, True]})
    scans: list[Any] = []
    real_scan = gguf_inspector.scan_file

    def counting_scan(*args: Any, **kwargs: Any) -> dict[str, Any]:
        scans.append((args, kwargs))
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(gguf_inspector, "scan_file", counting_scan)
    hp = GgufInspector().inspect(str(path)).hyperparameters
    assert len(scans) == 1
    assert (hp.head_count_kv, hp.feed_forward_length, hp.recurrent_layers) == (
        (0, 8, 0, 0), (0, 0, 4096, 0), (1, 0, 0, 1))
    shape = shape_from_hyperparameters(hp, "nemotron_h")
    assert shape.kv_layers == (False, True, False, False)
