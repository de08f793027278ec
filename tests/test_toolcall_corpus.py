"""Real model outputs with tool calls, parsed by the Rust ``ToolCallParser``.

The corpus (tests/corpus/tool_calls/*.json) gathers outputs from llama.cpp's,
vLLM's and sglang's parser tests and from issue reports, each with its
provenance. Its expectations follow our contract, not the source project's
(e.g. XML values are JSON strings with one leading and one trailing newline
stripped, calls inside ``<think>`` are not calls, text outside call blocks is
kept); a case's ``note`` says where they differ.

Each case is fed whole, in fixed-size pieces, at random split points and, where
the source had them, in the model's own token pieces: the events (adjacent
text, reasoning and same-call argument pieces merged) must be the same every
time, and the whole-input result must match the expected text, reasoning and
calls. Expected ``arguments`` of null means "any JSON object" (a stream cut
inside a key, where the contract fixes only that the result is an object).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from llamagate import rust_ext

CORPUS = Path(__file__).parent / "corpus" / "tool_calls"
CATEGORIES = {
    "hermes_json", "qwen3coder_xml", "bare_function", "missing_closer", "value_with_closer", "value_with_markup",
    "several_calls", "reasoning", "truncated", "prose_mention", "plain_text", "multiline_value", "utf8",
}
# The acceptance list, each of which the corpus must cover.
REQUIRED = {"hermes_json", "qwen3coder_xml", "bare_function", "missing_closer", "value_with_closer",
            "several_calls", "reasoning", "truncated", "prose_mention"}
FIXED_SIZES = (1, 2, 3, 5, 8, 64)
RANDOM_SPLITS = 3

ToolCallParser: Any = getattr(rust_ext, "ToolCallParser", None)
needs_parser = pytest.mark.skipif(ToolCallParser is None, reason="llamagate.rust_ext has no ToolCallParser yet")


def _load() -> list[dict[str, Any]]:
    cases = []
    for path in sorted(CORPUS.glob("*.json")):
        for case in json.loads(path.read_text(encoding="utf-8")):
            case["file"] = path.name
            cases.append(case)
    return cases


CASES = _load()
IDS = [case["id"] for case in CASES]


# -- the corpus itself ----------------------------------------------------------------------------


def test_corpus_is_well_formed() -> None:
    assert len(IDS) == len(set(IDS)), "duplicate case ids"
    for case in CASES:
        assert case["source"].strip(), case["id"]
        assert set(case["categories"]) <= CATEGORIES, case["id"]
        assert isinstance(case["input"], str) and case["input"], case["id"]
        if "chunks" in case:
            assert "".join(case["chunks"]) == case["input"], case["id"]
        expected = case["expected"]
        assert set(expected) == {"text", "reasoning", "calls"}, case["id"]
        for call in expected["calls"]:
            assert set(call) == {"name", "arguments", "recovered"}, case["id"]
            assert call["arguments"] is None or isinstance(call["arguments"], dict), case["id"]


def test_corpus_covers_the_acceptance_list() -> None:
    seen = {category for case in CASES for category in case["categories"]}
    assert REQUIRED <= seen, REQUIRED - seen
    assert {case["file"] for case in CASES} >= {"llama_cpp.json", "vllm.json", "sglang.json", "issues.json"}


# -- feeding the parser ---------------------------------------------------------------------------


def _feed(chunks: Iterable[str]) -> list[tuple[Any, ...]]:
    parser = ToolCallParser()
    events: list[tuple[Any, ...]] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish()
    return events


def _merged(events: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Adjacent text, reasoning and same-call argument pieces joined; empty pieces dropped."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        kind = event[0]
        if kind in ("text", "reasoning"):
            if not event[1]:
                continue
            if out and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1] + event[1])
                continue
        elif kind == "args":
            if not event[2]:
                continue
            if out and out[-1][0] == "args" and out[-1][1] == event[1]:
                out[-1] = ("args", event[1], out[-1][2] + event[2])
                continue
        out.append(tuple(event))
    return out


def _splits(case: dict[str, Any]) -> dict[str, list[str]]:
    text = case["input"]
    out = {f"{n}-char pieces": [text[i:i + n] for i in range(0, len(text), n)] for n in FIXED_SIZES}
    rng = random.Random(case["id"])
    for k in range(RANDOM_SPLITS):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
        out[f"random split {k}"] = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    if "chunks" in case:
        out["the source's token pieces"] = case["chunks"]
    return out


_PENDING = object()


def _outcome(events: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """Text, reasoning and the calls the events describe, checking their order on the way."""
    text, reasoning = [], []
    calls: list[dict[str, Any]] = []
    for event in events:
        kind = event[0]
        if kind == "text":
            text.append(event[1])
        elif kind == "reasoning":
            reasoning.append(event[1])
        elif kind == "start":
            _, index, call_id, name = event
            assert index == len(calls), f"call indexes must run 0, 1, 2...: got {index} after {len(calls)} calls"
            assert call_id == f"call_{index}", call_id
            calls.append({"name": name, "args": [], "end": _PENDING})
        elif kind == "args":
            assert event[1] < len(calls) and calls[event[1]]["end"] is _PENDING, f"args outside a call: {event}"
            calls[event[1]]["args"].append(event[2])
        elif kind == "end":
            assert event[1] < len(calls) and calls[event[1]]["end"] is _PENDING, f"end outside a call: {event}"
            reason = event[2]
            assert reason is None or (isinstance(reason, str) and reason), f"bad end reason {reason!r}"
            calls[event[1]]["end"] = reason
        else:
            raise AssertionError(f"unknown event {event!r}")
    result = []
    for index, call in enumerate(calls):
        assert call["end"] is not _PENDING, f"call {index} never ended"
        raw = "".join(call["args"])
        try:
            arguments = json.loads(raw)
        except ValueError as error:
            raise AssertionError(f"call {index} arguments are not JSON: {raw!r}") from error
        assert isinstance(arguments, dict), f"call {index} arguments are not an object: {raw!r}"
        result.append({"name": call["name"], "arguments": arguments, "recovered": call["end"] is not None,
                       "reason": call["end"]})
    return {"text": "".join(text), "reasoning": "".join(reasoning), "calls": result}


@needs_parser
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_case_parses_to_the_expected_calls(case: dict[str, Any]) -> None:
    got = _outcome(_feed([case["input"]]))
    expected = case["expected"]
    assert got["text"] == expected["text"], "visible text"
    assert got["reasoning"] == expected["reasoning"], "reasoning"
    assert [c["name"] for c in got["calls"]] == [c["name"] for c in expected["calls"]], "call names"
    for index, (call, want) in enumerate(zip(got["calls"], expected["calls"], strict=True)):
        if want["arguments"] is not None:
            assert call["arguments"] == want["arguments"], f"call {index} arguments"
        assert call["recovered"] == want["recovered"], f"call {index} recovered (end reason {call['reason']!r})"


@needs_parser
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_case_parses_the_same_in_any_pieces(case: dict[str, Any]) -> None:
    whole = _merged(_feed([case["input"]]))
    for label, chunks in _splits(case).items():
        assert _merged(_feed(chunks)) == whole, f"{label}: {chunks[:20]!r}"
