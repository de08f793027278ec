"""The Rust GGUF header scanner (rust_ext.scan_file / scan_bytes) on files
written by the gguf package and on hand-made (v1, malformed) data."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGUFEndian, GGUFValueType, GGUFWriter, Keys
from hypothesis import given, settings
from hypothesis import strategies as st

from llamagate.rust_ext import GGUFError, scan_bytes, scan_file

V = GGUFValueType

SCALARS: dict[GGUFValueType, st.SearchStrategy[Any]] = {
    V.UINT8: st.integers(0, 2**8 - 1),
    V.INT8: st.integers(-(2**7), 2**7 - 1),
    V.UINT16: st.integers(0, 2**16 - 1),
    V.INT16: st.integers(-(2**15), 2**15 - 1),
    V.UINT32: st.integers(0, 2**32 - 1),
    V.INT32: st.integers(-(2**31), 2**31 - 1),
    V.UINT64: st.integers(0, 2**64 - 1),
    V.INT64: st.integers(-(2**63), 2**63 - 1),
    V.FLOAT32: st.floats(width=32),
    V.FLOAT64: st.floats(),
    V.BOOL: st.booleans(),
    V.STRING: st.text(max_size=40),
}

# Arrays of arrays: the gguf package types inner lists by their first element.
INNER_LISTS = st.one_of(
    st.lists(SCALARS[V.INT32], min_size=1, max_size=4),
    st.lists(SCALARS[V.FLOAT32], min_size=1, max_size=4),
    st.lists(SCALARS[V.STRING], min_size=1, max_size=4),
    st.lists(SCALARS[V.BOOL], min_size=1, max_size=4),
)
NESTED = st.one_of(
    st.lists(INNER_LISTS, min_size=1, max_size=4).filter(lambda v: len({type(x[0]) for x in v}) == 1),
    st.lists(st.lists(st.lists(SCALARS[V.INT32], min_size=1, max_size=3), min_size=1, max_size=3), min_size=1, max_size=3),
)


@st.composite
def values(draw: st.DrawFn) -> tuple[GGUFValueType, Any, GGUFValueType | None]:
    """(value type, value, element type) of one metadata value."""
    kind = draw(st.sampled_from(["scalar", "array", "nested"]))
    if kind == "scalar":
        vtype = draw(st.sampled_from(list(SCALARS)))
        return vtype, draw(SCALARS[vtype]), None
    if kind == "array":
        elem = draw(st.sampled_from(list(SCALARS)))
        return V.ARRAY, draw(st.lists(SCALARS[elem], min_size=1, max_size=8)), elem
    return V.ARRAY, draw(NESTED), V.ARRAY


@dataclass(frozen=True)
class Tensor:
    name: str
    qtype: int
    shape: tuple[int, ...]  # GGUF order: ne[0] first

    @property
    def n_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * size


@st.composite
def tensors(draw: st.DrawFn) -> list[Tensor]:
    out = []
    for i in range(draw(st.integers(0, 5))):
        qtype = draw(st.sampled_from(sorted(GGML_QUANT_SIZES)))
        block, _ = GGML_QUANT_SIZES[qtype]
        dims = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
        suffix = draw(st.text(max_size=20).filter(lambda s: len(s.encode()) <= 40))
        out.append(Tensor(f"t{i}.{suffix}", qtype, (block * draw(st.integers(1, 3)), *dims)))
    return out


def write_gguf(path: Path, kvs: dict[str, tuple[Any, ...]], tensor_list: list[Tensor], *,
               arch: str = "testarch", alignment: int | None = None, endian: GGUFEndian = GGUFEndian.LITTLE) -> None:
    writer = GGUFWriter(path, arch, endianess=endian)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (vtype, value, elem) in kvs.items():
        writer.add_key_value(key, value, vtype, sub_type=elem)
    for t in tensor_list:
        block, size = GGML_QUANT_SIZES[t.qtype]
        byte_shape = (*reversed(t.shape[1:]), t.shape[0] // block * size)
        writer.add_tensor(t.name, np.zeros(byte_shape, dtype=np.uint8), raw_dtype=t.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN, containers element by element, types exact."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


@settings(max_examples=300)
@given(
    kvs=st.dictionaries(st.text(min_size=1, max_size=20).map(lambda s: f"test.{s}"), values(), max_size=12),
    tensor_list=tensors(),
    alignment=st.sampled_from([None, 1, 8, 32, 64, 256]),
    endian=st.sampled_from([GGUFEndian.LITTLE, GGUFEndian.BIG]),
)
def test_metadata_and_tensor_infos_written_by_gguf_writer_scan_back_equal(
    kvs: dict[str, tuple[Any, ...]], tensor_list: list[Tensor], alignment: int | None, endian: GGUFEndian
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        write_gguf(path, kvs, tensor_list, alignment=alignment, endian=endian)
        got = scan_file(path, tensors=True, array_values=True)
        data = path.read_bytes()

    align = alignment or 32
    expected_scalars = {"general.architecture": "testarch"}
    if alignment is not None:
        expected_scalars["general.alignment"] = alignment
    expected_scalars |= {k: v for k, (t, v, _) in kvs.items() if t != V.ARRAY}
    expected_arrays = {k: (elem, v) for k, (t, v, elem) in kvs.items() if t == V.ARRAY}

    assert got["complete"] is True and got["version"] == 3
    assert got["kv_count"] == len(expected_scalars) + len(expected_arrays)
    assert got["architecture"] == "testarch" and got["alignment"] == align
    assert got["metadata"].keys() == expected_scalars.keys()
    for key, value in expected_scalars.items():
        assert same(got["metadata"][key], value), key
    assert got["arrays"].keys() == expected_arrays.keys()
    for key, (elem, value) in expected_arrays.items():
        array = got["arrays"][key]
        assert array["type"] == elem.name.lower() and array["length"] == len(value), key
        assert same(array["values"], value), key

    offsets = np.cumsum([0] + [pad(t.n_bytes, align) for t in tensor_list])
    assert got["tensor_count"] == len(tensor_list)
    assert got["tensors"] == [
        {"name": t.name, "shape": list(t.shape), "type": t.qtype, "offset": int(o), "n_bytes": t.n_bytes}
        for t, o in zip(tensor_list, offsets)
    ]
    assert got["tensor_data_size"] == offsets[-1]
    assert got["header_size"] % align == 0 and got["header_size"] + got["tensor_data_size"] == len(data)

    assert same(scan_bytes(data, tensors=True, array_values=True), got)
    skipped = scan_bytes(data)
    assert skipped["tensors"] is None
    assert {k: a["values"] for k, a in skipped["arrays"].items()} == dict.fromkeys(expected_arrays)
    assert {k: (a["type"], a["length"]) for k, a in skipped["arrays"].items()} == {
        k: (a["type"], a["length"]) for k, a in got["arrays"].items()
    }


@settings(max_examples=300)
@given(
    kvs=st.dictionaries(st.text(min_size=1, max_size=8).map(lambda s: f"test.{s}"), values(), min_size=1, max_size=6),
    tensor_list=tensors(),
    edits=st.lists(st.tuples(st.integers(0, 2**20), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4),
)
def test_corrupted_headers_scan_or_raise_gguf_error_and_nothing_else(
    kvs: dict[str, tuple[Any, ...]], tensor_list: list[Tensor], edits: list[tuple[int, bytes]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        write_gguf(path, kvs, tensor_list)
        data = bytearray(path.read_bytes())
        for at, patch in edits:
            at %= len(data)
            data[at : at + len(patch)] = patch[: len(data) - at]
        path.write_bytes(data)
        for scan in (lambda: scan_file(path, tensors=True, array_values=True),
                     lambda: scan_bytes(bytes(data), tensors=True, array_values=True)):
            try:
                result = scan()
            except GGUFError as e:
                assert 0 <= e.offset <= len(data)
            else:
                if result["complete"]:
                    assert result["kv_count"] == len(result["metadata"]) + len(result["arrays"])
                    assert result["tensor_count"] == len(result["tensors"])
                else:
                    assert result["bytes_needed"] > 0


# -- what planning needs -------------------------------------------------------------------------

U32 = st.integers(0, 2**32 - 1)
PER_LAYER = st.one_of(U32, st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=6))
# 0/1 per layer: llama.cpp stores uint32, and reads a bool array as 0/1 too
FLAGS = st.one_of(U32, st.lists(st.integers(0, 1), min_size=1, max_size=6),
                  st.lists(st.booleans(), min_size=1, max_size=6))
# keys of the pinned llama.cpp (llama-arch.cpp) that the gguf package does not name yet
RECURRENT_LAYERS = "{arch}.attention.recurrent_layers"
INDEXER_TYPES = "{arch}.attention.indexer.types"
PLANNING: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "context_length": (Keys.LLM.CONTEXT_LENGTH, U32),
    "block_count": (Keys.LLM.BLOCK_COUNT, U32),
    "nextn_predict_layers": (Keys.LLM.NEXTN_PREDICT_LAYERS, U32),
    "head_count": (Keys.Attention.HEAD_COUNT, PER_LAYER),
    "head_count_kv": (Keys.Attention.HEAD_COUNT_KV, PER_LAYER),
    "embedding_length": (Keys.LLM.EMBEDDING_LENGTH, U32),
    "feed_forward_length": (Keys.LLM.FEED_FORWARD_LENGTH, PER_LAYER),
    "key_length": (Keys.Attention.KEY_LENGTH, U32),
    "value_length": (Keys.Attention.VALUE_LENGTH, U32),
    "key_length_swa": (Keys.Attention.KEY_LENGTH_SWA, U32),
    "value_length_swa": (Keys.Attention.VALUE_LENGTH_SWA, U32),
    "sliding_window": (Keys.Attention.SLIDING_WINDOW, U32),
    "sliding_window_pattern": (
        Keys.Attention.SLIDING_WINDOW_PATTERN,
        st.one_of(U32, st.lists(st.booleans(), min_size=1, max_size=8)),
    ),
    "full_attention_interval": (Keys.LLM.FULL_ATTENTION_INTERVAL, U32),
    "recurrent_layers": (RECURRENT_LAYERS, FLAGS),
    "shared_kv_layers": (Keys.Attention.SHARED_KV_LAYERS, U32),
    "kv_lora_rank": (Keys.Attention.KV_LORA_RANK, U32),
    "key_length_mla": (Keys.Attention.KEY_LENGTH_MLA, U32),
    "value_length_mla": (Keys.Attention.VALUE_LENGTH_MLA, U32),
    "indexer_key_length": (Keys.Attention.Indexer.KEY_LENGTH, U32),
    "indexer_types": (INDEXER_TYPES, FLAGS),
    "ssm_conv_kernel": (Keys.SSM.CONV_KERNEL, U32),
    "ssm_inner_size": (Keys.SSM.INNER_SIZE, U32),
    "ssm_state_size": (Keys.SSM.STATE_SIZE, U32),
    "ssm_group_count": (Keys.SSM.GROUP_COUNT, U32),
    "wkv_head_size": (Keys.WKV.HEAD_SIZE, U32),
    "token_shift_count": (Keys.LLM.TOKEN_SHIFT_COUNT, U32),
    "shortconv_l_cache": (Keys.ShortConv.L_CACHE, U32),
    "kda_head_dim": (Keys.KDA.HEAD_DIM, U32),
    "expert_count": (Keys.LLM.EXPERT_COUNT, U32),
    "expert_used_count": (Keys.LLM.EXPERT_USED_COUNT, PER_LAYER),
    "vocab_size": (Keys.LLM.VOCAB_SIZE, U32),
}


@settings(max_examples=60)
@given(
    arch=st.sampled_from(["llama", "gemma3", "qwen3next", "deepseek2", "mamba2", "lfm2"]),
    fields=st.fixed_dictionaries({}, optional={name: strategy for name, (_, strategy) in PLANNING.items()}),
    file_type=st.none() | st.integers(0, 40),
    tokens=st.none() | st.lists(st.text(max_size=5), min_size=1, max_size=30),
)
def test_the_planning_fields_come_typed_from_the_architecture_keys(
    arch: str, fields: dict[str, Any], file_type: int | None, tokens: list[str] | None
) -> None:
    kvs: dict[str, tuple[Any, ...]] = {}
    for name, value in fields.items():
        key = PLANNING[name][0].format(arch=arch)
        if isinstance(value, list):
            elem = V.BOOL if isinstance(value[0], bool) else V.INT32
            kvs[key] = (V.ARRAY, value, elem)
        else:
            kvs[key] = (V.UINT32, value, None)
    # The same keys under another architecture are not read.
    kvs["other.context_length"] = (V.UINT32, 7, None)
    if file_type is not None:
        kvs[Keys.General.FILE_TYPE] = (V.UINT32, file_type, None)
    if tokens is not None:
        kvs["tokenizer.ggml.tokens"] = (V.ARRAY, tokens, V.STRING)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        write_gguf(path, kvs, [], arch=arch)
        got = scan_file(path)

    expected = dict.fromkeys(PLANNING) | fields | {"file_type": file_type}
    for name in ("recurrent_layers", "indexer_types"):  # flags come back as 0/1 ints, whatever was written
        if isinstance(expected[name], list):
            expected[name] = [int(v) for v in expected[name]]
    if expected["vocab_size"] is None and tokens is not None:
        expected["vocab_size"] = len(tokens)
    assert got["model"] == expected
    assert _types(got["model"]) == _types(expected)  # 0/1 flags are ints, a pattern's are bools
    # Per-layer arrays are read for planning, but not returned unless asked for.
    assert all(a["values"] is None for a in got["arrays"].values())


def _types(model: dict[str, Any]) -> dict[str, Any]:
    return {k: [type(x) for x in v] if isinstance(v, list) else type(v) for k, v in model.items()}


def test_a_split_shard_reports_its_split_keys(tmp_path: Path) -> None:
    path = tmp_path / "m-00002-of-00003.gguf"
    write_gguf(path, {
        Keys.Split.LLM_KV_SPLIT_NO: (V.UINT16, 1, None),
        Keys.Split.LLM_KV_SPLIT_COUNT: (V.UINT16, 3, None),
        Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT: (V.INT32, 291, None),
    }, [])
    assert scan_file(path)["split"] == {"count": 3, "no": 1, "tensors_count": 291}
    write_gguf(path, {}, [])
    assert scan_file(path)["split"] is None


def test_the_chat_template_is_returned_by_itself_and_among_the_metadata(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}" * 300
    path = tmp_path / "m.gguf"
    write_gguf(path, {"tokenizer.chat_template": (V.STRING, template, None)}, [])
    header = scan_file(path)
    assert header["chat_template"] == header["metadata"]["tokenizer.chat_template"] == template


# -- hand-made data: GGUF v1, malformed headers --------------------------------------------------


@dataclass
class Enc:
    """A minimal GGUF encoder for what the gguf package cannot write."""

    version: int = 3
    endian: str = "<"

    def u32(self, x: int) -> bytes:
        return struct.pack(self.endian + "I", x)

    def u64(self, x: int) -> bytes:
        return struct.pack(self.endian + "Q", x)

    def length(self, n: int) -> bytes:
        return self.u64(n) if self.version >= 2 else self.u32(n)

    def header(self, n_tensors: int, n_kv: int) -> bytes:
        return b"GGUF" + self.u32(self.version) + self.length(n_tensors) + self.length(n_kv)

    def string(self, s: str | bytes) -> bytes:
        raw = s.encode() if isinstance(s, str) else s
        return self.length(len(raw)) + raw

    def kv(self, key: str | bytes, vtype: int, payload: bytes) -> bytes:
        return self.string(key) + self.u32(vtype) + payload

    def u32_kv(self, key: str, x: int) -> bytes:
        return self.kv(key, V.UINT32, self.u32(x))

    def array(self, elem: int, count: int, payload: bytes) -> bytes:
        return self.u32(elem) + self.length(count) + payload

    def tensor(self, name: str | bytes, dims: list[int], qtype: int, offset: int) -> bytes:
        dim = (lambda d: struct.pack(self.endian + "q", d)) if self.version >= 2 else self.u32
        return self.string(name) + self.u32(len(dims)) + b"".join(map(dim, dims)) + self.u32(qtype) + self.u64(offset)


def test_version_1_with_32_bit_lengths_and_counts_scans(tmp_path: Path) -> None:
    e = Enc(version=1)
    tokens = ["a", "bc", "", "déf"]
    data = (
        e.header(1, 4)
        + e.kv("general.architecture", V.STRING, e.string("llama"))
        + e.u32_kv("llama.context_length", 2048)
        + e.kv("tokenizer.ggml.tokens", V.ARRAY, e.array(V.STRING, 4, b"".join(map(e.string, tokens))))
        + e.kv("llama.attention.head_count_kv", V.ARRAY, e.array(V.INT32, 2, struct.pack("<ii", 4, 8)))
        + e.tensor("output.weight", [64, 3], 0, 0)
    )
    data += bytes(pad(len(data), 32) - len(data)) + bytes(64 * 3 * 4)
    path = tmp_path / "v1.gguf"
    path.write_bytes(data)
    header = scan_file(path, tensors=True, array_values=True)
    assert header["version"] == 1 and header["kv_count"] == 4 and header["tensor_count"] == 1
    assert header["arrays"]["tokenizer.ggml.tokens"] == {"type": "string", "length": 4, "values": tokens}
    assert header["model"]["context_length"] == 2048 and header["model"]["head_count_kv"] == [4, 8]
    assert header["model"]["vocab_size"] == 4
    assert header["tensors"] == [{"name": "output.weight", "shape": [64, 3], "type": 0, "offset": 0, "n_bytes": 768}]
    assert header["header_size"] + header["tensor_data_size"] == len(data)


def test_every_ggml_type_of_the_pinned_llama_cpp_sizes_its_tensors(tmp_path: Path) -> None:
    """GGML_QUANT_SIZES of the gguf package, plus Q2_0 (42) which only the
    pinned llama.cpp knows yet (64 per block, 18 bytes)."""
    sizes = {int(k): v for k, v in GGML_QUANT_SIZES.items()} | {42: (64, 18)}
    e = Enc()
    infos, offset = b"", 0
    for i, (qtype, (block, size)) in enumerate(sorted(sizes.items())):
        infos += e.tensor(f"t{i}", [block * 2, 3], qtype, offset)
        offset += pad(2 * 3 * size, 32)
    header = scan_bytes(e.header(len(sizes), 0) + infos, tensors=True)
    assert [t["n_bytes"] for t in header["tensors"]] == [2 * 3 * sizes[q][1] for q in sorted(sizes)]
    assert header["tensor_data_size"] == offset


def test_a_file_that_is_not_gguf_says_so(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(GGUFError, match="not a GGUF file") as raised:
        scan_file(path)
    assert raised.value.offset == 0 and isinstance(raised.value, ValueError)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        scan_bytes(b"PK")  # two bytes are enough to tell


@pytest.mark.parametrize(
    ("data", "message", "offset"),
    [
        (b"GGUF" + struct.pack("<I", 4) + bytes(16), "unsupported GGUF version 4", 4),
        (b"GGUF" + struct.pack("<I", 0) + bytes(16), "unsupported GGUF version 0", 4),
        (Enc().header(2**30, 0), "tensors exceed the limit", 8),
        (Enc().header(0, 2**40), "key-value pairs exceed the limit", 16),
        (Enc().header(0, 1000) + bytes(100), r"1000 key-value pairs and 0 tensor infos \(at least 14000 bytes\) "
         r"exceeds the 100 bytes that remain", 8),
        (Enc().header(0, 1) + Enc().u64(9_999_999) + bytes(20), "string length 9999999 exceeds the 20 bytes that remain", 24),
        (Enc().header(0, 1) + Enc().u64(2**40) + bytes(20), "string length 1099511627776 exceeds the limit", 24),
        (Enc().header(0, 1) + Enc().kv("", V.UINT8, b"\x01"), "empty key", 24),
        (Enc().header(0, 1) + Enc().kv(b"\xff\xfe", V.UINT8, b"\x01"), "not valid UTF-8", 24),
        (Enc().header(0, 1) + Enc().kv("a", 13, b"\x01"), "invalid value type 13", 33),
        (Enc().header(0, 2) + Enc().u32_kv("a", 1) + Enc().u32_kv("a", 2), 'duplicate key "a"', 41),
        (Enc().header(0, 1) + Enc().kv("a", V.ARRAY, Enc().array(V.UINT32, 2**31, bytes(16))), "array count 2147483648 exceeds the limit", 37),
        (Enc().header(0, 1) + Enc().kv("a", V.ARRAY, Enc().array(V.UINT32, 1000, bytes(16))),
         r"array of 1000 uint32 values \(at least 4000 bytes\) exceeds the 16 bytes that remain", 37),
        (Enc().header(0, 1) + Enc().kv("a", V.ARRAY, Enc().array(V.STRING, 3, Enc().string("x") + Enc().u64(10**6) + bytes(40))),
         "string length 1000000 exceeds the 40 bytes that remain", 58),
        (Enc().header(0, 1) + Enc().kv("a", V.ARRAY, b"".join(Enc().array(V.ARRAY, 1, b"") for _ in range(8))
                                       + Enc().array(V.UINT8, 1, b"\x00")), "nested more than 8 deep", 133),
        (Enc().header(0, 1) + Enc().u32_kv("general.alignment", 48), "alignment 48 is not a power of two", 24),
        (Enc().header(0, 1) + Enc().u32_kv("general.alignment", 0), "alignment 0 is not a power of two", 24),
        (Enc().header(0, 1) + Enc().kv("general.alignment", V.UINT64, Enc().u64(32)),
         'key "general.alignment" has type uint64, expected uint32', 24),
        (Enc().header(0, 2) + Enc().kv("general.architecture", V.STRING, Enc().string("llama"))
         + Enc().kv("llama.context_length", V.FLOAT32, bytes(4)),
         'key "llama.context_length" has type float32, expected an integer', 69),
        (Enc().header(0, 2) + Enc().kv("general.architecture", V.STRING, Enc().string("llama"))
         + Enc().kv("llama.feed_forward_length", V.ARRAY, Enc().array(V.FLOAT32, 1, bytes(4))),
         'key "llama.feed_forward_length" has type array of float32, '
         'expected an integer or an array of integers', 69),
        (Enc().header(0, 1) + Enc().kv("llama.attention.head_count", V.ARRAY, Enc().array(V.UINT8, 65537, bytes(65537))),
         'key "llama.attention.head_count" has 65537 per-layer values, more than the limit of 65536', 24),
        (Enc().header(0, 1) + Enc().kv("general.architecture", V.UINT32, bytes(4)),
         'key "general.architecture" has type uint32, expected a string', 24),
        (Enc().header(1, 0) + Enc().tensor("t", [1, 2, 3, 4, 5], 0, 0), "tensor has 5 dimensions", 33),
        (Enc().header(1, 0) + Enc().tensor("t", [4, -1], 0, 0), r"tensor dimension 1 is negative \(-1\)", 45),
        (Enc().header(1, 0) + Enc().tensor("t", [2**40, 2**40], 0, 0), "element count overflows int64", 33),
        (Enc().header(1, 0) + Enc().tensor("t", [2**62, 1], 0, 0), "size overflows", 53),
        (Enc().header(1, 0) + Enc().tensor("t", [32], 4, 0), "unknown ggml tensor type 4", 45),
        (Enc().header(1, 0) + Enc().tensor("t", [33], 2, 0), "33 elements is not a multiple of the block size 32", 45),
        (Enc().header(1, 0) + Enc().tensor("t", [32], 0, 64), "tensor data offset 64 is not the expected 0", 49),
        (Enc().header(2, 0) + Enc().tensor("t", [8], 0, 0) + Enc().tensor("t", [8], 0, 32), 'duplicate tensor name "t"', 57),
        (Enc().header(1, 0) + Enc().tensor("x" * 64, [8], 0, 0), "tensor name of 64 bytes is too long", 24),
    ],
)
def test_malformed_data_is_a_gguf_error_naming_the_byte_and_the_reason(
    data: bytes, message: str, offset: int, tmp_path: Path
) -> None:
    path = tmp_path / "bad.gguf"
    # Room after the header, except where running out of room is the point.
    path.write_bytes(data if "remain" in message else data + bytes(64 * 1024))
    with pytest.raises(GGUFError, match=message) as raised:
        scan_file(path)
    assert raised.value.offset == offset
    assert str(raised.value).startswith(f"GGUF error at byte {offset}: ")


def test_a_truncated_buffer_asks_for_at_least_the_bytes_its_lengths_announce() -> None:
    e = Enc()
    head = e.header(0, 1) + e.u64(9_999_999) + bytes(20)
    # the key, then at least a value type and a one-byte value
    assert scan_bytes(head) == {"complete": False, "bytes_needed": 9_999_999 - 20 + 4 + 1}
    assert scan_bytes(b"") == {"complete": False, "bytes_needed": 16}
    assert scan_bytes(b"GGU") == {"complete": False, "bytes_needed": 13}
    assert scan_bytes(e.header(0, 1000)) == {"complete": False, "bytes_needed": 14_000}
    assert scan_bytes(e.header(10, 0)) == {"complete": False, "bytes_needed": 240}


def test_tensor_data_past_the_end_of_the_file_is_an_error_for_a_file_only(tmp_path: Path) -> None:
    e = Enc()
    data = e.header(1, 0) + e.tensor("t", [64, 64], 0, 0)
    data += bytes(pad(len(data), 32) - len(data)) + bytes(64 * 64 * 4 - 1)
    path = tmp_path / "cut.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=f"tensor data ends at byte {len(data) + 1} but the file has only {len(data)}"):
        scan_file(path)
    assert scan_bytes(data)["complete"] is True


def test_a_big_endian_header_scans_like_its_little_endian_twin(tmp_path: Path) -> None:
    kvs = {
        "test.u16": (V.UINT16, 513, None),
        "test.f64": (V.FLOAT64, -1.5, None),
        "test.words": (V.ARRAY, ["x", "yz"], V.STRING),
        "llama.attention.head_count_kv": (V.ARRAY, [1, 2, 3], V.INT32),
    }
    tensor_list = [Tensor("w", 2, (64, 2))]
    results = []
    for endian in (GGUFEndian.LITTLE, GGUFEndian.BIG):
        path = tmp_path / f"{endian.name}.gguf"
        write_gguf(path, kvs, tensor_list, arch="llama", endian=endian)
        results.append(scan_file(path, tensors=True, array_values=True))
    assert results[0] == results[1]
    assert results[1]["model"]["head_count_kv"] == [1, 2, 3]


# -- the Python API ------------------------------------------------------------------------------


def test_a_missing_file_is_a_file_not_found_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError) as raised:
        scan_file(missing)
    assert raised.value.filename == missing
    with pytest.raises(IsADirectoryError):
        scan_file(str(tmp_path))


def test_array_values_takes_a_bool_or_a_collection_of_keys_but_not_a_string(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, {"a": (V.ARRAY, [1, 2], V.INT32), "b": (V.ARRAY, [3], V.INT32)}, [])
    assert scan_file(path, array_values={"b"})["arrays"] == {
        "a": {"type": "int32", "length": 2, "values": None},
        "b": {"type": "int32", "length": 1, "values": [3]},
    }
    assert scan_file(path, array_values=("a", "b"))["arrays"]["a"]["values"] == [1, 2]
    assert scan_file(path, array_values=False) == scan_file(path)
    with pytest.raises(TypeError, match="not a str"):
        scan_file(path, array_values="a")
    with pytest.raises(TypeError):
        scan_file(path, True)  # keyword-only  # type: ignore[misc]
    with pytest.raises(TypeError, match="bytes"):
        scan_bytes("GGUF")  # type: ignore[arg-type]


GIL_CHECK = textwrap.dedent(
    """
    import os, sys, threading, time
    sys.path[:0] = {paths!r}
    from llamagate.rust_ext import GGUFError, scan_file

    fifo = {fifo!r}
    os.mkfifo(fifo)
    scanning = threading.Event()
    outcome = []

    def scan():
        scanning.set()
        try:
            {scan}(fifo)
        except GGUFError as e:
            outcome.append(str(e))

    t = threading.Thread(target=scan)
    t.start()
    scanning.wait()
    time.sleep(0.2)
    # The scan is blocked opening the FIFO until a writer opens it: this
    # thread only wakes up and gets here if the scan released the GIL.
    with open(fifo, "wb"):
        pass
    t.join()
    print(outcome)
    """
)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_the_gil_is_released_while_scanning(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    script = GIL_CHECK.format(paths=[str(root)], fifo=str(tmp_path / "fifo"), scan="scan_file")
    # Holding the GIL would deadlock the child: the timeout would fail the test.
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert "GGUF error at byte 0" in child.stdout
