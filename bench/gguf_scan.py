"""How fast the Rust GGUF header scanner is, against three baselines measured
in the same run (absolute times mean little on a noisy machine; ratios do):

  (a) the gguf package's GGUFReader,
  (b) a pure-Python scanner that reads only the keys planning needs and
      seeks past every other value (string arrays: one read per length),
  (c) a plain read of the same header bytes: the floor.

On SmolLM2 (the default model) and llama.cpp's qwen2 vocabulary GGUF
(151,936 tokens and as many merges), page cache warm. Targets: >= 1000x
faster than GGUFReader, >= 20x faster than the pure-Python scanner, within
3x of the plain read.

    .venv/bin/python bench/gguf_scan.py [FILE.gguf ...] [--check]

``--check`` exits with status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGUFReader

from llamagate.adapters import paths
from llamagate.rust_ext import scan_file
from llamagate.server.settings import Settings

TARGET_READER = 1000.0
TARGET_PYTHON = 20.0
TARGET_FLOOR = 3.0

# -- (b) the pure-Python seek-past scanner --------------------------------------------------------

# ARCH.<suffix> keys planning needs, plus two keys of their own.
PLANNING_SUFFIXES = frozenset(
    {
        "context_length",
        "block_count",
        "attention.head_count",
        "attention.head_count_kv",
        "embedding_length",
        "attention.key_length",
        "attention.value_length",
        "attention.sliding_window",
        "full_attention_interval",
        "attention.kv_lora_rank",
        "attention.key_length_mla",
        "ssm.inner_size",
        "ssm.state_size",
    }
)
PLANNING_KEYS = frozenset({"general.architecture", "tokenizer.chat_template"})

FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


def _wanted(key: str, arch: str | None) -> bool:
    if key in PLANNING_KEYS:
        return True
    prefix, _, suffix = key.partition(".")
    return suffix in PLANNING_SUFFIXES and (arch is None or prefix == arch)


def _read_value(f: BinaryIO, vtype: int) -> Any:
    if vtype in FIXED:
        fmt = "<" + FIXED[vtype]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if vtype == STRING:
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(n).decode()
    if vtype == ARRAY:
        elem, count = struct.unpack("<IQ", f.read(12))
        return [_read_value(f, elem) for _ in range(count)]
    raise ValueError(f"bad value type {vtype}")


def _skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype in FIXED:
        f.seek(struct.calcsize(FIXED[vtype]), 1)
    elif vtype == STRING:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(n, 1)
    elif vtype == ARRAY:
        elem, count = struct.unpack("<IQ", f.read(12))
        if elem in FIXED:
            f.seek(count * struct.calcsize(FIXED[elem]), 1)
        elif elem == STRING:
            read, seek, unpack = f.read, f.seek, struct.Struct("<Q").unpack
            for _ in range(count):
                seek(unpack(read(8))[0], 1)
        else:
            for _ in range(count):
                _skip_value(f, elem)
    else:
        raise ValueError(f"bad value type {vtype}")


def python_scan(path: Path) -> dict[str, Any]:
    """The planning keys of a little-endian GGUF v2/v3 file, and where its
    tensor data starts; everything else is sought past."""
    with path.open("rb") as f:
        magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"{path}: not a little-endian GGUF v2/v3 file")
        found: dict[str, Any] = {}
        alignment = 32
        for _ in range(n_kv):
            (n,) = struct.unpack("<Q", f.read(8))
            key = f.read(n).decode()
            (vtype,) = struct.unpack("<I", f.read(4))
            if _wanted(key, found.get("general.architecture")) or key == "general.alignment":
                found[key] = _read_value(f, vtype)
            else:
                _skip_value(f, vtype)
        alignment = found.pop("general.alignment", alignment)
        for _ in range(n_tensors):
            (n,) = struct.unpack("<Q", f.read(8))
            f.seek(n, 1)
            (n_dims,) = struct.unpack("<I", f.read(4))
            f.seek(8 * n_dims + 4 + 8, 1)
        end = f.tell()
    return {"keys": found, "header_size": -(-end // alignment) * alignment}


# -- timing ---------------------------------------------------------------------------------------


def _times(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f} ms"


def bench_file(path: Path, reader_runs: int) -> list[tuple[str, float, float, bool]]:
    header = scan_file(path)
    n = min(header["header_size"], path.stat().st_size)

    def plain_read() -> bytes:
        with path.open("rb") as f:
            return f.read(n)

    # The pure-Python scanner must find what the scanner finds.
    py = python_scan(path)
    full = scan_file(path, array_values=True)
    values = full["metadata"] | {k: a["values"] for k, a in full["arrays"].items()}
    expected = {k: v for k, v in values.items() if _wanted(k, header["architecture"])}
    assert py["keys"] == expected, (py["keys"], expected)
    assert py["header_size"] == header["header_size"]

    plain_read()  # warm the page cache
    scanner, floor = [], []
    deadline = time.perf_counter() + 2.0
    while time.perf_counter() < deadline or len(scanner) < 50:  # interleaved: the same conditions
        scanner += _times(lambda: scan_file(path), 10)
        floor += _times(plain_read, 10)
    python = _times(lambda: python_scan(path), 5)
    reader = _times(lambda: GGUFReader(path), reader_runs)

    t_scan, t_floor = statistics.median(scanner), statistics.median(floor)
    t_python, t_reader = statistics.median(python), statistics.median(reader)
    print(f"\n{path.name}: header {n:,} bytes, {len(header['arrays'])} arrays, {header['tensor_count']} tensors")
    print(f"  Rust scanner (scan_file)    {_fmt(t_scan)}   (median of {len(scanner)})")
    print(f"  (c) plain read of header    {_fmt(t_floor)}   (median of {len(floor)})")
    print(f"  (b) pure-Python seek-past   {_fmt(t_python)}   (median of {len(python)})")
    print(f"  (a) gguf GGUFReader         {_fmt(t_reader)}   (median of {len(reader)})")
    results = [
        ("GGUFReader / scanner", t_reader / t_scan, TARGET_READER, t_reader / t_scan >= TARGET_READER),
        ("pure-Python / scanner", t_python / t_scan, TARGET_PYTHON, t_python / t_scan >= TARGET_PYTHON),
        ("scanner / plain read", t_scan / t_floor, TARGET_FLOOR, t_scan / t_floor <= TARGET_FLOOR),
    ]
    for name, ratio, target, ok in results:
        bound = ">=" if name != "scanner / plain read" else "<="
        print(f"  {name:24s} {ratio:10.2f}x   target {bound} {target:g}x   {'met' if ok else 'MISSED'}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--reader-runs", type=int, default=2, help="GGUFReader runs per file (seconds each)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    cache = Settings.from_env(os.environ).cache_dir
    files = args.files or [
        paths.default_model_path(cache),
        paths.engine_source_dir(cache) / "models" / "ggml-vocab-qwen2.gguf",
    ]
    missing = [f for f in files if not f.is_file()]
    if missing:
        print(f"missing: {', '.join(map(str, missing))} (./dev sets them up)", file=sys.stderr)
        return 2
    missed = [r for f in files for r in bench_file(f, args.reader_runs) if not r[3]]
    print("\nall targets met" if not missed else f"\n{len(missed)} target(s) missed")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
