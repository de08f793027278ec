"""The Rust GGUF scanner on real files: llama.cpp's models/*.gguf and SmolLM2.

Every field the scanner returns is compared with what the gguf package's
GGUFReader reads, for every file. GGUFReader takes seconds per vocabulary
(80 s for all the files here on one core), so it reads them in one process
per core; ``LLAMAGATE_GGUF_PARITY=quick`` compares a representative set
instead (the real model with its tensors, a WPM, an SPM and the one GGUF v2
vocabulary) for a fast local loop.

Truncation: every prefix of the smallest real header; for the others, every
prefix of the structured parts (the counts and key-value headers before the
vocabulary, the end of the key-value data, all tensor infos) and a sample of
prefixes inside the long string arrays.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader, GGUFValueType

from llamagate.rust_ext import GGUFError, scan_bytes, scan_file

# WPM, SPM (scores, token types) and the one GGUF v2 file (BPE); SmolLM2 (BPE, tensors) always.
PARITY_QUICK = ("ggml-vocab-bert-bge.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-aquila.gguf")


def vocab_files(llama_cpp_tree: Path) -> list[Path]:
    files = sorted((llama_cpp_tree / "models").glob("*.gguf"))
    assert len(files) >= 10, f"expected llama.cpp's vocabulary GGUFs in {llama_cpp_tree / 'models'}"
    return files


@pytest.fixture(scope="session")
def real_files(llama_cpp_tree: Path, smollm2_path: Path) -> list[Path]:
    return [*vocab_files(llama_cpp_tree), smollm2_path]


@pytest.fixture(scope="session")
def parity_files(llama_cpp_tree: Path, smollm2_path: Path) -> list[Path]:
    vocabs = vocab_files(llama_cpp_tree)
    if os.environ.get("LLAMAGATE_GGUF_PARITY") == "quick":
        vocabs = [f for f in vocabs if f.name in PARITY_QUICK]
    files = [*vocabs, smollm2_path]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for path, expected in zip(files, pool.map(read_with_gguf_package, files)):
            _READ[path] = expected
    return files


_READ: dict[Path, dict[str, Any]] = {}  # filled in parallel by the parity_files fixture


def read_once(path: Path) -> dict[str, Any]:
    if path not in _READ:
        _READ[path] = read_with_gguf_package(path)
    return _READ[path]


def read_with_gguf_package(path: Path) -> dict[str, Any]:
    """What GGUFReader reads, in the shape of the scanner's result."""
    reader = GGUFReader(path)
    metadata: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        if field.types[0] == GGUFValueType.ARRAY:
            # parts: key length, key, value type, element type, count, elements...
            arrays[name] = {
                "type": GGUFValueType(int(field.parts[3][0])).name.lower(),
                "length": int(field.parts[4][0]),
                "values": field.contents(),
            }
        else:
            metadata[name] = field.contents()
    return {
        "version": int(reader.fields["GGUF.version"].parts[0][0]),
        "tensor_count": int(reader.fields["GGUF.tensor_count"].parts[0][0]),
        "kv_count": int(reader.fields["GGUF.kv_count"].parts[0][0]),
        "alignment": int(reader.alignment),
        "metadata": metadata,
        "arrays": arrays,
        "header_size": int(reader.data_offset),
        "tensors": [
            {
                "name": t.name,
                "shape": [int(d) for d in t.shape],
                "type": int(t.tensor_type),
                "offset": int(t.data_offset) - int(reader.data_offset),
                "n_bytes": int(t.n_bytes),
            }
            for t in reader.tensors
        ],
    }


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def test_every_field_equals_what_gguf_reader_reads(parity_files: list[Path]) -> None:
    for path in parity_files:
        expected = read_once(path)
        got = scan_file(path, tensors=True, array_values=True)
        assert got["complete"] is True
        for field in ("version", "tensor_count", "kv_count", "alignment", "header_size", "tensors"):
            assert got[field] == expected[field], f"{path.name}: {field}"
        assert list(got["metadata"]) == list(expected["metadata"]), path.name
        for key, value in expected["metadata"].items():
            assert same_value(got["metadata"][key], value), f"{path.name}: {key}"
        assert got["arrays"].keys() == expected["arrays"].keys(), path.name
        for key, array in expected["arrays"].items():
            assert got["arrays"][key]["type"] == array["type"], f"{path.name}: {key}"
            assert got["arrays"][key]["length"] == array["length"], f"{path.name}: {key}"
            assert all(map(same_value, got["arrays"][key]["values"], array["values"])), f"{path.name}: {key}"
        # The derived fields are the same values, by their keys.
        metadata = expected["metadata"]
        assert got["architecture"] == metadata.get("general.architecture")
        assert got["chat_template"] == metadata.get("tokenizer.chat_template")
        sizes = [t["n_bytes"] for t in expected["tensors"]]
        padded = sum(-(-n // expected["alignment"]) * expected["alignment"] for n in sizes)
        assert got["tensor_data_size"] == padded


def test_smollm2_plans_from_its_llama_keys(smollm2_path: Path) -> None:
    expected = read_once(smollm2_path)["metadata"]
    model = scan_file(smollm2_path)["model"]
    assert model["context_length"] == expected["llama.context_length"] == 8192
    assert model["block_count"] == expected["llama.block_count"]
    assert model["head_count"] == expected["llama.attention.head_count"]
    assert model["head_count_kv"] == expected["llama.attention.head_count_kv"]
    assert model["embedding_length"] == expected["llama.embedding_length"]
    assert model["vocab_size"] == expected["llama.vocab_size"] == 49152
    assert model["file_type"] == expected["general.file_type"]
    assert model["feed_forward_length"] == expected["llama.feed_forward_length"]  # a scalar: every layer
    assert model["sliding_window"] is None and model["expert_count"] is None
    assert model["nextn_predict_layers"] is None and model["recurrent_layers"] is None


def test_smollm2_tensor_data_fills_the_file_after_the_header(smollm2_path: Path) -> None:
    header = scan_file(smollm2_path)
    assert header["header_size"] + header["tensor_data_size"] == smollm2_path.stat().st_size


def test_every_real_file_scans_with_arrays_skipped_and_the_same_shape_as_with_values(real_files: list[Path]) -> None:
    for path in real_files:
        skipped = scan_file(path)
        read = scan_file(path, array_values=True)
        assert all(a["values"] is None for a in skipped["arrays"].values()), path.name
        assert {k: (a["type"], a["length"]) for k, a in skipped["arrays"].items()} == {
            k: (a["type"], len(a["values"])) for k, a in read["arrays"].items()
        }, path.name
        assert skipped["metadata"] == read["metadata"], path.name
        assert skipped["kv_count"] == len(skipped["metadata"]) + len(skipped["arrays"]), path.name
        tokens = skipped["arrays"].get("tokenizer.ggml.tokens")
        if tokens is not None and skipped["model"]["vocab_size"] is not None:
            assert skipped["model"]["vocab_size"] in (tokens["length"], skipped["metadata"].get(
                f"{skipped['architecture']}.vocab_size"
            )), path.name
        if skipped["tensor_count"] == 0:
            # A vocabulary: the header is the file, up to the alignment padding.
            size = path.stat().st_size
            assert size <= skipped["header_size"] < size + skipped["alignment"], path.name


def test_scanning_bytes_equals_scanning_the_file(real_files: list[Path]) -> None:
    for path in real_files:
        from_file = scan_file(path, tensors=True)
        data = path.read_bytes()[: from_file["header_size"]]
        assert scan_bytes(data, tensors=True) == from_file, path.name
        assert scan_bytes(bytearray(data), tensors=True) == from_file, path.name
        assert scan_bytes(memoryview(data), tensors=True) == from_file, path.name


def test_only_the_arrays_asked_for_come_with_values(llama_cpp_tree: Path) -> None:
    path = llama_cpp_tree / "models" / "ggml-vocab-qwen2.gguf"
    header = scan_file(path, array_values=["tokenizer.ggml.merges", "not.a.key"])
    values = {k: a["values"] for k, a in header["arrays"].items()}
    assert values["tokenizer.ggml.merges"] is not None
    assert len(values["tokenizer.ggml.merges"]) == header["arrays"]["tokenizer.ggml.merges"]["length"]
    assert [k for k, v in values.items() if v is not None] == ["tokenizer.ggml.merges"]
    assert header["model"]["vocab_size"] == 151936


# -- truncation ----------------------------------------------------------------------------------


def header_end(data: bytes) -> int:
    """The shortest prefix of ``data`` that scans complete (the end of the
    tensor infos, before the alignment padding)."""
    full = scan_bytes(data)
    assert full["complete"], "the whole header must scan"
    low, high = max(0, full["header_size"] - full["alignment"]), full["header_size"]
    while low < high:
        mid = (low + high) // 2
        if scan_bytes(data[:mid])["complete"]:
            high = mid
        else:
            low = mid + 1
    return low


def structured_prefixes(data: bytes, end: int, rng: random.Random, samples: int) -> list[int]:
    """Every prefix length up to the first long array and around the end of the
    key-value data and the tensor infos; a sample of the rest."""
    first_array = data.find(b"tokenizer.ggml.tokens")
    head = range(min(end, (first_array if first_array > 0 else 4096) + 4096))
    tail = range(max(0, end - 20_000), end)
    sample = rng.sample(range(end), min(samples, end))
    return sorted({*head, *tail, *sample})


def check_prefixes(data: bytes, end: int, lengths: list[int]) -> None:
    view = memoryview(data)
    for n in lengths:
        result = scan_bytes(view[:n])
        if n >= end:
            assert result["complete"], n
            continue
        assert result == {"complete": False, "bytes_needed": result["bytes_needed"]}, n
        # A lower bound: fetching exactly that much never overshoots the header.
        assert 0 < result["bytes_needed"] <= end - n, n


def test_a_truncated_real_header_needs_more_bytes_at_every_prefix(llama_cpp_tree: Path) -> None:
    # The smallest real header (627 KB, a 30k-token WPM vocabulary): every one
    # of its prefixes, ~25 s; the bigger files below get structured samples.
    data = (llama_cpp_tree / "models" / "ggml-vocab-bert-bge.gguf").read_bytes()
    end = header_end(data)
    check_prefixes(data, end, range(end + 1))


def test_a_truncated_model_header_needs_more_bytes_at_every_tensor_info_prefix(smollm2_path: Path) -> None:
    with smollm2_path.open("rb") as f:
        data = f.read(2_000_000)
    end = header_end(data)
    check_prefixes(data, end, structured_prefixes(data, end, random.Random(2), samples=300))


def test_truncated_big_vocabulary_headers_need_more_bytes(llama_cpp_tree: Path) -> None:
    rng = random.Random(3)
    for name in ("ggml-vocab-qwen2.gguf", "ggml-vocab-aquila.gguf", "ggml-vocab-gemma-4.gguf"):
        data = (llama_cpp_tree / "models" / name).read_bytes()
        end = header_end(data)
        check_prefixes(data, end, rng.sample(range(end), 60))


def test_a_truncated_file_is_an_error_not_a_request_for_more(smollm2_path: Path, tmp_path: Path) -> None:
    with smollm2_path.open("rb") as f:
        data = f.read(2_000_000)
    header = scan_bytes(data)
    rng = random.Random(4)
    cut = tmp_path / "cut.gguf"
    for n in [0, 3, 4, 10, 24, 100, *rng.sample(range(header["header_size"]), 40), header["header_size"] + 1000]:
        cut.write_bytes(data[:n])
        with pytest.raises(GGUFError) as raised:
            scan_file(cut)
        assert raised.value.offset <= n
        assert str(raised.value).startswith("GGUF error at byte ")


# -- corruption ----------------------------------------------------------------------------------


def corrupt(data: bytes, rng: random.Random, regions: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        start, end = rng.choice(regions)
        at = rng.randrange(start, end)
        kind = rng.randrange(4)
        if kind == 0:
            out[at] = rng.randrange(256)
        elif kind == 1:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 2:  # a wild 64-bit length or count
            out[at : at + 8] = rng.getrandbits(64).to_bytes(8, "little")
        else:  # a plausible-but-wrong small number
            out[at : at + 8] = rng.randrange(1 << 20).to_bytes(8, "little")
    return bytes(out[: len(data)])


def structure_regions(data: bytes, end: int) -> list[tuple[int, int]]:
    first_array = data.find(b"tokenizer.ggml.tokens")
    return [(0, max(64, first_array + 64)), (max(0, end - 16_000), end), (0, end)]


def test_random_corruption_of_a_real_header_is_a_result_or_a_gguf_error(smollm2_path: Path) -> None:
    with smollm2_path.open("rb") as f:
        data = f.read(2_000_000)
    end = header_end(data)
    data = data[:end]
    regions = structure_regions(data, end)
    rng = random.Random(5)
    outcomes = {"complete": 0, "incomplete": 0, "error": 0}
    for _ in range(1000):
        bad = corrupt(data, rng, regions)
        try:
            result = scan_bytes(bad, tensors=True, array_values=rng.random() < 0.2)
        except GGUFError as e:
            assert 0 <= e.offset <= len(bad) and str(e).startswith(f"GGUF error at byte {e.offset}: ")
            outcomes["error"] += 1
        else:
            outcomes["complete" if result["complete"] else "incomplete"] += 1
    assert all(outcomes.values()), outcomes


ALLOCATION_CHECK = textwrap.dedent(
    """
    import random, resource, sys, tempfile
    sys.path[:0] = {paths!r}
    from llamagate.rust_ext import GGUFError, scan_bytes, scan_file
    from test_gguf_scanner_real import corrupt

    data = open({header!r}, "rb").read()
    regions = {regions!r}
    path = tempfile.mktemp(suffix=".gguf")
    scan_bytes(data, tensors=True, array_values=True)  # warm up, then cap the address space
    vm = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize:"))) * 1024
    limit = vm + 64 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rng = random.Random(6)
    for i in range(700):
        bad = corrupt(data, rng, regions)
        try:
            scan_bytes(bad, tensors=True, array_values=True)
        except GGUFError:
            pass
        if i % 10 == 0:
            open(path, "wb").write(bad)
            try:
                scan_file(path, tensors=True, array_values=True)
            except GGUFError:
                pass
    print("ok")
    """
)


def test_corrupt_lengths_never_make_the_scanner_allocate_beyond_the_data(smollm2_path: Path, tmp_path: Path) -> None:
    """In a child process whose address space is capped at 64 MiB over what it
    uses (the header is 1.8 MB): an allocation sized by a corrupt length would
    fail and abort the child."""
    with smollm2_path.open("rb") as f:
        data = f.read(2_000_000)
    end = header_end(data)
    header = tmp_path / "header.gguf"
    header.write_bytes(data[:end])
    tests = Path(__file__).resolve().parent  # where `corrupt` comes from
    script = ALLOCATION_CHECK.format(
        paths=[str(tests)], header=str(header), regions=structure_regions(data[:end], end)
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr[-3000:]
