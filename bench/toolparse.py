"""How fast the Rust streaming tool-call parser is (issue 10), against a Python
implementation of the reference's approach (SPEC §14: regexes and balanced-brace
matching over the whole buffer, re-run on every chunk) measured in the same run,
interleaved round by round (these machines are noisy: only ratios taken side by
side mean something):

  1. plain-text throughput: prose with the odd '<' in it, fed in 4 KiB chunks;
  2. the cost of one feed() of a 1..8-character chunk, Python call included
     (median), over a stream of text, a Hermes JSON call and a Qwen3-Coder call;
  3. the cost of a chunk at the end of a 100 KB argument against one at its
     start, for both markup formats.

Targets for the Rust parser: plain text at least 200 MB/s; per-chunk median
under 2 µs at every chunk size; last chunk at most 2x the first.

    .venv/bin/python bench/toolparse.py [--rounds 7] [--check]

The last line is the verdict; ``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from llamagate import rust_ext

TARGET_PLAIN_MBPS = 200.0
TARGET_CHUNK_US = 2.0
TARGET_LAST_OVER_FIRST = 2.0

PLAIN_BYTES = 256 * 1024
PLAIN_CHUNK = 4096
ARG_BYTES = 100 * 1024
ARG_CHUNK = 4  # characters per chunk while an argument streams (about a token)
ARG_SAMPLES = 300  # chunks timed at each end of the argument


# -- the reference: SPEC §14's healing, re-scanning the whole buffer on every chunk ---------------

MARKERS = ("<tool_call>", "<function=")
HOLD = 32  # SPEC §14: a possible marker prefix is held up to 32 chars
CLOSED_BLOCK = re.compile(
    r"<tool_call>.*?</tool_call>|<function=[^>]*>.*?</function>(?:\s*</tool_call>)?", re.DOTALL)
TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
FUNCTION = re.compile(r"<function=([^>\s]+)>(.*?)(?=</tool_call>|<function=|\Z)", re.DOTALL)
PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.DOTALL)


def balanced_object(s: str, start: int) -> str | None:
    """The JSON object starting at s[start] == '{', if it is closed: braces counted outside strings."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(s)):
        c = s[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return s[start:i + 1]
    return None


def healed_arguments(raw: Any) -> str:
    if isinstance(raw, str):
        try:
            json.loads(raw)
            return raw
        except ValueError:
            return json.dumps({"query": raw})  # SPEC §14 with healing on
    return json.dumps(raw)


def parse_calls(buf: str) -> list[tuple[str, str]]:
    """Every call in the buffer: JSON inside <tool_call> blocks, then <function=...> blocks."""
    calls = []
    for m in TOOL_CALL.finditer(buf):
        body = m.group(1)
        brace = body.find("{")
        if brace < 0 or body[:brace].strip():
            continue
        text = balanced_object(body, brace)
        if text is None:
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            calls.append((obj["name"], healed_arguments(obj.get("arguments", obj.get("parameters", {})))))
    for m in FUNCTION.finditer(buf):
        name, body = m.group(1), re.sub(r"</function>\s*\Z", "", m.group(2).rstrip())
        params = PARAMETER.findall(body)
        if len(params) == 1:  # a single parameter's value runs to the end of the body
            key = params[0][0]
            value = body.split(f"<parameter={key}>", 1)[1]
            value = re.sub(r"</parameter>\s*\Z", "", value.rstrip())
            params = [(key, value)]
        calls.append((name, json.dumps({k: v.strip() for k, v in params})))
    return calls


def held_prefix(visible: str) -> int:
    """How many trailing chars could still begin a marker (held back, at most HOLD)."""
    tail = visible[-HOLD:]
    for i in range(len(tail)):
        if any(m.startswith(tail[i:]) for m in MARKERS):
            return len(tail) - i
    return 0


class SpecReference:
    """Feed/finish like the Rust parser; every chunk re-strips and re-parses the whole buffer."""

    def __init__(self) -> None:
        self.buf = ""
        self.shown = 0
        self.in_markup = False
        self.started = 0

    def _calls(self, events: list[tuple[Any, ...]]) -> list[tuple[str, str]]:
        calls = parse_calls(self.buf)
        for index in range(self.started, len(calls)):
            events.append(("start", index, f"call_{index}", calls[index][0]))
        self.started = max(self.started, len(calls))
        return calls

    def feed(self, chunk: str) -> list[tuple[Any, ...]]:
        self.buf += chunk
        events: list[tuple[Any, ...]] = []
        if not self.in_markup:
            visible = CLOSED_BLOCK.sub("", self.buf)
            opened = [i for i in (visible.find(m) for m in MARKERS) if i >= 0]
            if opened:  # an open block: stop showing text, keep accumulating
                self.in_markup, limit = True, min(opened)
            else:
                limit = len(visible) - held_prefix(visible)
            if limit > self.shown:
                events.append(("text", visible[self.shown:limit]))
                self.shown = limit
        self._calls(events)
        return events

    def finish(self) -> list[tuple[Any, ...]]:
        events: list[tuple[Any, ...]] = []
        visible = re.sub(r"(?:<tool_call>|<function=).*\Z", "", CLOSED_BLOCK.sub("", self.buf), flags=re.DOTALL)
        if not self.in_markup and len(visible) > self.shown:
            events.append(("text", visible[self.shown:]))
        for index, (_, arguments) in enumerate(self._calls(events)):
            events += [("args", index, arguments), ("end", index, None)]
        return events


# -- streams --------------------------------------------------------------------------------------

WORDS = ("the", "model", "reads", "a", "file", "and", "then", "it", "writes", "code", "if", "x", "<", "y", "returns",
         "<b>bold</b>", "value", "for", "each", "call", "list", "tool", "result", "answer", "user", "asked", "about")


def prose(n_bytes: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_bytes:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))).capitalize() + ". "
        if rng.random() < 0.1:
            sentence += "\n\n"
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:n_bytes]


def mixed_stream() -> str:
    code = "".join(f"    total += item_{i} * {i}\n" for i in range(20))
    return (prose(1500, seed=2) + "\n<tool_call>\n" + json.dumps({"name": "python", "arguments": {"code": code}})
            + "\n</tool_call>\n" + prose(800, seed=3) + "\n<tool_call>\n<function=terminal>\n<parameter=command>\n"
            + "ls -la /tmp && grep -rn 'x < y' src/\n</parameter>\n</function>\n</tool_call>\n" + prose(400, seed=4))


def long_argument() -> str:
    line = "    print('a line of generated code that goes on', i, \"quoted\", {'k': i})\n"
    return (line * (ARG_BYTES // len(line) + 1))[:ARG_BYTES]


def argument_stream(fmt: str) -> tuple[str, str, str]:
    """(before the argument, the argument as written in the stream, after it)."""
    value = long_argument()
    if fmt == "json":
        encoded = json.dumps(value)[1:-1]
        return ('Writing it now.\n<tool_call>\n{"name": "write_file", "arguments": {"path": "a.py", "content": "',
                encoded, '"}}\n</tool_call>')
    opener = ("Writing it now.\n<tool_call>\n<function=write_file>\n<parameter=path>\na.py\n</parameter>\n"
              "<parameter=content>\n")
    return opener, value, "\n</parameter>\n</function>\n</tool_call>"


def pieces(text: str, sizes: Iterable[int]) -> list[str]:
    out, i = [], 0
    for n in sizes:
        if i >= len(text):
            break
        out.append(text[i:i + n])
        i += n
    if i < len(text):
        out.append(text[i:])
    return out


# -- timing ---------------------------------------------------------------------------------------

Parser = Callable[[], Any]


def timer_overhead_ns() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20000):
        a = clock()
        samples.append(clock() - a)
    return statistics.median(samples)


def feed_all(make: Parser, chunks: list[str]) -> float:
    parser = make()
    start = time.perf_counter()
    for chunk in chunks:
        parser.feed(chunk)
    parser.finish()
    return time.perf_counter() - start


def per_feed_ns(make: Parser, prefix: str, chunks: list[str], overhead: float) -> list[float]:
    """Each feed() of ``chunks`` timed alone, after ``prefix`` was fed in one go (untimed)."""
    parser = make()
    if prefix:
        parser.feed(prefix)
    clock, feed, out = time.perf_counter_ns, parser.feed, []
    for chunk in chunks:
        a = clock()
        feed(chunk)
        out.append(clock() - a - overhead)
    return out


def interleaved(rounds: int, jobs: dict[str, Callable[[], list[float]]]) -> dict[str, list[float]]:
    """Every job once per round, the order rotated round by round, so that noise falls on all alike."""
    out: dict[str, list[float]] = {key: [] for key in jobs}
    keys = list(jobs)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            out[key].extend(jobs[key]())
    return out


# -- the three measurements -----------------------------------------------------------------------


def bench_plain(rust: Parser, rounds: int) -> tuple[str, bool]:
    text = prose(PLAIN_BYTES)
    chunks = pieces(text, [PLAIN_CHUNK] * (len(text) // PLAIN_CHUNK + 1))
    got = interleaved(rounds, {"rust": lambda: [feed_all(rust, chunks)],
                               "ref": lambda: [feed_all(SpecReference, chunks)]})
    mb = len(text.encode()) / 1e6
    rust_mbps, ref_mbps = mb / statistics.median(got["rust"]), mb / statistics.median(got["ref"])
    ok = rust_mbps >= TARGET_PLAIN_MBPS
    print(f"plain text ({len(text) // 1024} KiB in {PLAIN_CHUNK // 1024} KiB chunks): Rust {rust_mbps:8.1f} MB/s, "
          f"SPEC §14 reference {ref_mbps:7.2f} MB/s = {rust_mbps / ref_mbps:7.1f}x the reference; "
          f"target >= {TARGET_PLAIN_MBPS:g} MB/s {'met' if ok else 'MISSED'}", flush=True)
    return f"plain text {rust_mbps:.1f} MB/s", ok


def bench_chunks(rust: Parser, rounds: int, overhead: float) -> tuple[str, bool]:
    stream = mixed_stream()
    worst = 0.0
    for size in range(1, 9):
        chunks = pieces(stream, [size] * (len(stream) // size + 1))
        got = interleaved(rounds, {name: partial(per_feed_ns, make, "", chunks, overhead)
                                   for name, make in (("rust", rust), ("ref", SpecReference))})
        ours = got["rust"]
        rust_us, ref_us = statistics.median(ours) / 1e3, statistics.median(got["ref"]) / 1e3
        worst = max(worst, rust_us)
        print(f"per feed(), {size}-char chunks, {len(stream):,}-char stream (median of {len(ours):,}): "
              f"Rust {rust_us:6.3f} µs, SPEC §14 reference {ref_us:8.2f} µs = {ref_us / rust_us:7.1f}x faster; "
              f"target < {TARGET_CHUNK_US:g} µs {'met' if rust_us < TARGET_CHUNK_US else 'MISSED'}", flush=True)
    return f"per-chunk median {worst:.3f} µs (worst size)", worst < TARGET_CHUNK_US


def bench_long_argument(rust: Parser, rounds: int, overhead: float) -> tuple[str, bool]:
    worst = 0.0
    for fmt in ("json", "xml"):
        before, arg, _ = argument_stream(fmt)
        span = ARG_CHUNK * ARG_SAMPLES
        first = (before, pieces(arg[:span], [ARG_CHUNK] * ARG_SAMPLES))
        last = (before + arg[:-span], pieces(arg[-span:], [ARG_CHUNK] * ARG_SAMPLES))
        got = interleaved(rounds, {f"{name} {label}": partial(per_feed_ns, make, prefix, chunks, overhead)
                                   for label, (prefix, chunks) in (("first", first), ("last", last))
                                   for name, make in (("rust", rust), ("ref", SpecReference))})
        medians = {label: (statistics.median(got[f"rust {label}"]) / 1e3, statistics.median(got[f"ref {label}"]) / 1e3)
                   for label in ("first", "last")}
        (r_first, p_first), (r_last, p_last) = medians["first"], medians["last"]
        ratio, ref_ratio = r_last / r_first, p_last / p_first
        worst = max(worst, ratio)
        print(f"100 KB {fmt.upper()} argument, {ARG_CHUNK}-char chunks: Rust last {r_last:.3f} µs / first "
              f"{r_first:.3f} µs = {ratio:.2f}x; SPEC §14 reference last {p_last:.1f} µs / first {p_first:.1f} µs = "
              f"{ref_ratio:.1f}x; Rust's last chunk {p_last / r_last:.0f}x faster than the reference's; "
              f"target <= {TARGET_LAST_OVER_FIRST:g}x {'met' if ratio <= TARGET_LAST_OVER_FIRST else 'MISSED'}",
              flush=True)
    return f"last/first chunk {worst:.2f}x (worst format)", worst <= TARGET_LAST_OVER_FIRST


def check_streams(rust: Parser) -> None:
    """Both must find the calls in the streams they are timed on, or the comparison means nothing."""
    for text, names, size in ((mixed_stream(), ["python", "terminal"], 7),
                              ("".join(argument_stream("json")), ["write_file"], 4096),
                              ("".join(argument_stream("xml")), ["write_file"], 4096)):
        for make in (rust, SpecReference):  # (big pieces for the long streams: the reference re-scans them)
            parser = make()
            events = [e for chunk in pieces(text, [size] * (len(text) // size + 1)) for e in parser.feed(chunk)]
            events += parser.finish()
            assert [e[3] for e in events if e[0] == "start"] == names, (make, names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per measurement")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    rust = getattr(rust_ext, "ToolCallParser", None)
    if rust is None:
        print("llamagate.rust_ext has no ToolCallParser: build rust_ext first", file=sys.stderr)
        return 2
    check_streams(rust)
    overhead = timer_overhead_ns()
    print(f"(timer overhead {overhead:.0f} ns, subtracted from every timed feed)")
    results = [bench_plain(rust, args.rounds), bench_chunks(rust, args.rounds, overhead),
               bench_long_argument(rust, args.rounds, overhead)]
    missed = [label for label, ok in results if not ok]
    print("verdict: " + ("PASS: every target met (" + "; ".join(label for label, _ in results) + ")"
                         if not missed else "FAIL: " + "; ".join(missed)))
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
