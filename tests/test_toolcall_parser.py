"""The streaming tool-call parser (rust_ext ``ToolCallParser``, issue 10).

Each law of the contract is a hypothesis property over generated streams:
text interleaved with well-formed Hermes JSON and Qwen3-Coder XML call
blocks and ``<think>`` blocks (so the expected text, reasoning and calls are
known), and random markup soup (where only the laws that need no oracle
apply). Example tests pin down each format and each recovery.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from llamagate.rust_ext import ToolCallParseError, ToolCallParser

MARKERS = ("<tool_call>", "<function=", "<think>")
WS = " \t\n\r"

# -- feeding and reading the events ---------------------------------------------------------------


def feed(chunks: Iterable[str], **caps: Any) -> list[tuple[Any, ...]]:
    parser = ToolCallParser(**caps)
    events: list[tuple[Any, ...]] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish()
    return events


def merged(events: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Adjacent text, adjacent reasoning and adjacent same-call args joined."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        last = out[-1] if out else None
        if last and e[0] in ("text", "reasoning") and last[0] == e[0]:
            out[-1] = (e[0], last[1] + e[1])
        elif last and e[0] == "args" and last[0] == "args" and last[1] == e[1]:
            out[-1] = ("args", e[1], last[2] + e[2])
        else:
            out.append(tuple(e))
    return out


@dataclass
class Outcome:
    text: str = ""
    reasoning: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)


def outcome(events: Sequence[tuple[Any, ...]]) -> Outcome:
    """What the events say, checking that they are well-formed on the way:
    calls start in index order, args and end only inside a started call,
    every call ends, and its args are one JSON object."""
    out = Outcome()
    raw: list[list[str]] = []
    for e in events:
        if e[0] == "text":
            out.text += e[1]
        elif e[0] == "reasoning":
            out.reasoning += e[1]
        elif e[0] == "start":
            _, index, call_id, name = e
            assert index == len(out.calls) and call_id == f"call_{index}"
            out.calls.append({"name": name, "end": "open"})
            raw.append([])
        elif e[0] == "args":
            assert e[1] == len(out.calls) - 1 and out.calls[e[1]]["end"] == "open", e
            raw[e[1]].append(e[2])
        else:
            assert e[0] == "end" and out.calls[e[1]]["end"] == "open", e
            assert e[2] is None or (isinstance(e[2], str) and e[2]), e
            out.calls[e[1]]["end"] = e[2]
    for call, pieces in zip(out.calls, raw, strict=True):
        assert call["end"] != "open", "a call never ended"
        call["raw"] = "".join(pieces)
        call["args"] = json.loads(call["raw"])
        assert isinstance(call["args"], dict), call["raw"]
    return out


def split_at(text: str, cuts: Iterable[int]) -> list[str]:
    points = sorted({c for c in cuts if 0 < c < len(text)})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def assert_any_chunking_gives(text: str, whole: list[tuple[Any, ...]], cuts: Sequence[int]) -> None:
    assert merged(feed(split_at(text, cuts))) == whole, f"cuts {sorted(set(cuts))}"
    assert merged(feed(list(text))) == whole, "one char at a time"


# -- generated streams with a known meaning -------------------------------------------------------

_TEXT_PIECES = ["a", "Z", "7", " ", "\n", "\t", "<", ">", "/", "=", "{", "}", '"', "\\", "é", "😀", "中",
                "tool_call", "function", "think", "</think>", "</tool_call>", "</function>", "<b>", "<tool_c"]
_VALUE_PIECES = ["x", " ", "\n", "\t", "<", ">", "/", '"', "\\", "{", "}", "é", "😀", "中", "\r",
                 "</parameter>", "</function>", "</tool_call>", "parameter=", "<p"]


def _no_marker(s: str) -> bool:
    return not any(m in s for m in MARKERS)


texts = st.lists(st.sampled_from(_TEXT_PIECES), max_size=10).map("".join).filter(_no_marker)
names = st.from_regex(r"[a-z][a-z0-9_.-]{0,12}", fullmatch=True)
keys = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
json_scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.lists(st.sampled_from([*"ab <>/\\\"\n\té😀\x01", "</tool_call>"]), max_size=8).map("".join))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
json_args = st.dictionaries(st.text(max_size=6), json_values, max_size=4)


def _closes_early(value: str) -> bool:
    """Whether the value holds a marker that ends it (the next parameter or call), or a
    `</parameter>` that the markup after it makes a closer."""
    return (any(m in value for m in ("<parameter=", *MARKERS))
            or bool(re.search(r"</parameter>[ \t\n\r]*</(function|tool_call)>|</function>[ \t\n\r]*</tool_call>",
                              "\n" + value + "\n</parameter>")))


xml_values = st.lists(st.sampled_from(_VALUE_PIECES), max_size=10).map("".join).filter(lambda v: not _closes_early(v))


@dataclass(frozen=True)
class Block:
    markup: str
    kind: str  # "call" or "think"
    name: str = ""
    args: Any = None
    reasoning: str = ""
    bare: bool = False


@st.composite
def hermes_blocks(draw: st.DrawFn) -> Block:
    name, args = draw(names), draw(json_args)
    key = draw(st.sampled_from(["arguments", "parameters"]))
    as_string = draw(st.booleans())
    fields: list[tuple[str, Any]] = [("name", name), (key, json.dumps(args) if as_string else args)]
    if draw(st.booleans()):
        fields.reverse()  # the name after the arguments
    envelope = json.dumps(dict(fields), ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1])))
    ws = draw(st.sampled_from(["", "\n", " \n "]))
    markup = f"<tool_call>{ws}{envelope}{ws}</tool_call>"
    return Block(markup, "call", name, args)


@st.composite
def xml_blocks(draw: st.DrawFn) -> Block:
    name = draw(names)
    params = draw(st.dictionaries(keys, xml_values, max_size=3))
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    bare = draw(st.booleans())
    markup = f"<function={name}>\n{body}</function>"
    if not bare:
        markup = f"<tool_call>\n{markup}\n</tool_call>"
    return Block(markup, "call", name, params, bare=bare)


@st.composite
def think_blocks(draw: st.DrawFn) -> Block:
    inside = draw(st.lists(st.sampled_from(_TEXT_PIECES + ["<tool_call>", "<function=f>", "{", "<think>"]),
                           max_size=10).map("".join).filter(lambda s: "</think>" not in s))
    return Block(f"<think>{inside}</think>", "think", reasoning=inside)


blocks = st.one_of(hermes_blocks(), xml_blocks(), think_blocks())


@dataclass(frozen=True)
class Stream:
    text: str
    expected_text: str
    reasoning: str
    calls: list[Block]


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    items: list[str | Block] = []
    for _ in range(draw(st.integers(0, 4))):
        items += [draw(texts), draw(blocks)]
    items.append(draw(texts))
    for i, item in enumerate(items):
        # after a bare function, a `</tool_call>` is taken as its closer
        previous = items[i - 1] if i else None
        if isinstance(item, str) and isinstance(previous, Block) and previous.bare:
            assume(not item.lstrip(WS).startswith("</tool_call>"))
    expected = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            between_calls = 0 < i < len(items) - 1 and all(
                isinstance(b, Block) and b.kind == "call" for b in (items[i - 1], items[i + 1]))
            if not (between_calls and item.strip(WS) == ""):
                expected.append(item)
    text = "".join(i if isinstance(i, str) else i.markup for i in items)
    block_list = [i for i in items if isinstance(i, Block)]
    return Stream(text, "".join(expected), "".join(b.reasoning for b in block_list),
                  [b for b in block_list if b.kind == "call"])


# The soup: markup fragments in any order, for the laws that need no oracle.
_SOUP = ["<tool_call>", "</tool_call>", "<function=f>", "<function=g h>", "</function>", "<parameter=k>",
         "</parameter>", "<think>", "</think>", "{", "}", "[", "]", '"', "\\", ":", ",", " ", "\n", '"name"',
         '"arguments"', '"parameters"', '"f"', "1", "-", ".", "e", "true", "nul", "x", "é", "😀", "<", ">",
         "<tool_c", "</para", "\\u00e9", "\\ud83d", "\\u", '"{\\"a\\": 1}"']
soups = st.lists(st.sampled_from(_SOUP), max_size=40).map("".join)
cut_lists = st.lists(st.integers(1, 400), max_size=12)


# -- law 1: chunking ------------------------------------------------------------------------------


@settings(max_examples=150)
@given(streams(), cut_lists)
def test_any_chunking_of_a_stream_gives_the_same_events(stream: Stream, cuts: list[int]) -> None:
    whole = merged(feed([stream.text]))
    assert_any_chunking_gives(stream.text, whole, cuts)


@settings(max_examples=40)
@given(streams())
def test_every_single_split_point_gives_the_same_events(stream: Stream) -> None:
    whole = merged(feed([stream.text]))
    for at in range(1, len(stream.text)):
        assert merged(feed([stream.text[:at], stream.text[at:]])) == whole, f"split at {at}"


@settings(max_examples=300)
@given(soups, cut_lists)
def test_any_chunking_of_markup_soup_gives_the_same_events(text: str, cuts: list[int]) -> None:
    whole = merged(feed([text]))
    assert_any_chunking_gives(text, whole, cuts)


# -- laws 2 and 3: text kept exactly, markup never shown, arguments whole -------------------------


@settings(max_examples=300)
@given(streams())
def test_text_outside_calls_is_kept_exactly_and_calls_are_read_whole(stream: Stream) -> None:
    got = outcome(feed([stream.text]))
    assert got.text == stream.expected_text
    assert got.reasoning == stream.reasoning
    assert [c["name"] for c in got.calls] == [b.name for b in stream.calls]
    assert [c["args"] for c in got.calls] == [b.args for b in stream.calls]
    assert [c["end"] for c in got.calls] == [None] * len(stream.calls)


@settings(max_examples=300)
@given(soups, cut_lists)
def test_arguments_of_any_call_are_one_json_object(text: str, cuts: list[int]) -> None:
    outcome(feed(split_at(text, cuts)))  # checks the events' shape and every call's JSON


@settings(max_examples=150)
@given(streams(), st.data())
def test_a_stream_cut_anywhere_still_closes_every_call(stream: Stream, data: st.DataObject) -> None:
    end = data.draw(st.integers(0, len(stream.text)))
    got = outcome(feed([stream.text[:end]]))
    whole = outcome(feed([stream.text]))
    # a cut stream has no call the whole one lacks, and the calls it has are named alike
    assert len(got.calls) <= len(whole.calls)
    for cut, full in zip(got.calls, whole.calls, strict=False):
        assert full["name"].startswith(cut["name"])


@settings(max_examples=200)
@given(streams())
def test_markup_never_appears_in_text(stream: Stream) -> None:
    text = outcome(feed(list(stream.text))).text
    # (the text around the blocks may spell markup itself, as in "<tool_call" + "<tool_call>...</tool_call>" + ">{")
    for markup in [b.markup for b in stream.calls] + ["<tool_call>{", "<tool_call>\n<function=", "<parameter="]:
        if markup not in stream.expected_text:
            assert markup not in text


# -- law 4: only a possible marker start is held back ---------------------------------------------


def _possible_marker_start(text: str) -> str:
    for k in range(min(len(text), 10), 0, -1):
        if any(m.startswith(text[-k:]) for m in MARKERS):
            return text[-k:]
    return ""


@settings(max_examples=300)
@given(texts, cut_lists)
def test_only_the_tail_that_could_start_a_marker_is_held_back(text: str, cuts: list[int]) -> None:
    parser = ToolCallParser()
    fed = shown = ""
    for chunk in split_at(text, cuts):
        fed += chunk
        shown += "".join(str(e[1]) for e in parser.feed(chunk))
        assert fed == shown + _possible_marker_start(fed)
    assert shown + "".join(str(e[1]) for e in parser.finish()) == text


def test_a_held_back_tail_that_turns_out_not_to_be_a_marker_is_text() -> None:
    parser = ToolCallParser()
    assert parser.feed("see <tool_c") == [("text", "see ")]
    assert parser.feed("ar") == [("text", "<tool_car")]
    assert parser.feed("<") == []
    assert parser.finish() == [("text", "<")]


def test_reasoning_holds_back_only_a_possible_closer() -> None:
    parser = ToolCallParser()
    assert parser.feed("<think>hmm </th") == [("reasoning", "hmm ")]
    assert parser.feed("x") == [("reasoning", "</thx")]
    assert parser.feed("</think>ok") == [("text", "ok")]


# -- law 6: caps ----------------------------------------------------------------------------------


def test_arguments_waiting_for_a_late_name_are_capped() -> None:
    parser = ToolCallParser(max_buffer=64)
    with pytest.raises(ToolCallParseError, match="max_buffer"):
        parser.feed('<tool_call>{"arguments": {"text": "' + "x" * 100 + '"}, "name": "f"}')
    with pytest.raises(ToolCallParseError, match="finished"):
        parser.feed("more")
    with pytest.raises(ToolCallParseError):
        parser.finish()


def test_whitespace_after_an_undecided_opener_is_capped() -> None:
    parser = ToolCallParser(max_buffer=10)
    parser.feed("<tool_call>")
    with pytest.raises(ToolCallParseError, match="max_buffer"):
        for _ in range(11):
            parser.feed(" ")


def test_json_nesting_is_capped() -> None:
    with pytest.raises(ToolCallParseError, match="max_depth"):
        feed(['<tool_call>{"name": "f", "arguments": {"a": [[[1]]]}}</tool_call>'], max_depth=3)
    assert outcome(feed(['<tool_call>{"name": "f", "arguments": {"a": [[1]]}}</tool_call>'], max_depth=3)).calls


def test_calls_per_stream_are_capped() -> None:
    two = "<function=a>\n</function>\n<function=b>\n</function>"
    assert len(outcome(feed([two], max_calls=2)).calls) == 2
    with pytest.raises(ToolCallParseError, match="max_calls"):
        feed([two], max_calls=1)


def test_the_parse_error_is_a_value_error_and_options_are_keyword_only() -> None:
    assert issubclass(ToolCallParseError, ValueError)
    with pytest.raises(TypeError):
        ToolCallParser(10)  # type: ignore[call-arg]


@settings(max_examples=200)
@given(soups, cut_lists, st.integers(0, 12), st.integers(0, 3), st.integers(0, 4))
def test_tight_caps_either_parse_or_raise_the_parse_error(
        text: str, cuts: list[int], max_buffer: int, max_calls: int, max_depth: int) -> None:
    try:
        outcome(feed(split_at(text, cuts), max_buffer=max_buffer, max_calls=max_calls, max_depth=max_depth))
    except ToolCallParseError:
        pass


def test_finish_is_final() -> None:
    parser = ToolCallParser()
    assert parser.finish() == []
    with pytest.raises(ToolCallParseError):
        parser.feed("x")
    with pytest.raises(ToolCallParseError):
        parser.finish()


# -- UTF-8 ----------------------------------------------------------------------------------------


@settings(max_examples=100)
@given(st.text(st.sampled_from(["é", "😀", "中", "\u0301", "a", "<", " "]), max_size=30), st.data())
def test_multibyte_characters_survive_every_split(text: str, data: st.DataObject) -> None:
    stream = f'{text}<tool_call>{{"name": "{text}", "arguments": {{"v": "{text}"}}}}</tool_call>{text}'
    stream += f"<function=f>\n<parameter=v>\n{text}\n</parameter>\n</function>"
    assume(_no_marker(text))
    whole = merged(feed([stream]))
    got = outcome(whole)
    assert [c["args"] for c in got.calls] == [{"v": text}, {"v": text}]
    cuts = data.draw(cut_lists)
    assert_any_chunking_gives(stream, whole, cuts)


# -- examples of each format ----------------------------------------------------------------------


def test_hermes_call_between_text() -> None:
    events = merged(feed([('Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                          "</tool_call>\nDone.")]))
    assert events == [("text", "Checking.\n"), ("start", 0, "call_0", "get_weather"),
                      ("args", 0, '{"city": "Paris"}'), ("end", 0, None), ("text", "\nDone.")]


def test_hermes_arguments_streamed_before_the_call_ends() -> None:
    parser = ToolCallParser()
    assert parser.feed('<tool_call>{"name": "f", "arguments": {"code": "print(') == [
        ("start", 0, "call_0", "f"), ("args", 0, '{"code": "print(')]
    assert parser.feed("1)") == [("args", 0, "1)")]
    assert parser.feed('"}}</tool_call>') == [("args", 0, '"}'), ("end", 0, None)]


def test_hermes_arguments_given_as_a_json_string_are_streamed_decoded() -> None:
    events = merged(feed(['<tool_call>{"name": "f", "arguments": "{\\"q\\": \\"a\\\\nb\\"}"}</tool_call>']))
    assert events[1] == ("args", 0, '{"q": "a\\nb"}')


def test_hermes_several_calls_and_two_objects_in_one_block() -> None:
    got = outcome(feed([('<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
                        '<tool_call>{"name": "b", "arguments": {"x": 1}}\n{"name": "c"}</tool_call>')]))
    assert [(c["name"], c["args"], c["end"]) for c in got.calls] == [
        ("a", {}, None), ("b", {"x": 1}, None), ("c", {}, None)]
    assert got.text == ""


def test_hermes_missing_closers_are_recovered_with_a_reason() -> None:
    got = outcome(feed(['<tool_call>{"name": "f", "arguments": {"a": 1}\n</tool_call>Then text.']))
    assert (got.calls[0]["args"], got.calls[0]["end"], got.text) == ({"a": 1}, "unclosed JSON", "Then text.")
    got = outcome(feed(['<tool_call>{"name": "f", "arguments": {"a": 1}}\n<tool_call>{"name": "g"}']))
    assert [(c["name"], c["end"]) for c in got.calls] == [("f", "missing </tool_call>"),
                                                          ("g", "missing </tool_call>")]


def test_hermes_malformed_json_ends_the_call_and_skips_to_the_closer() -> None:
    got = outcome(feed(['<tool_call>{"name": "f", "arguments": {"a": 1 oops}}</tool_call>after']))
    assert (got.calls[0]["args"], got.calls[0]["end"], got.text) == ({"a": 1}, "malformed JSON", "after")


def test_xml_call_values_are_json_strings_with_one_newline_stripped_each_side() -> None:
    got = outcome(feed([("<tool_call>\n<function=python>\n<parameter=code>\n\nprint('hi')\n\n</parameter>\n"
                        "<parameter=timeout>\n30\n</parameter>\n</function>\n</tool_call>")]))
    assert got.calls == [{"name": "python", "end": None, "raw": '{"code": "\\nprint(\'hi\')\\n", "timeout": "30"}',
                          "args": {"code": "\nprint('hi')\n", "timeout": "30"}}]


def test_xml_bare_function_without_the_opener() -> None:
    got = outcome(feed(["Sure.\n<function=ls>\n<parameter=path>\n/tmp\n</parameter>\n</function>"]))
    assert (got.text, got.calls[0]["name"], got.calls[0]["args"], got.calls[0]["end"]) == (
        "Sure.\n", "ls", {"path": "/tmp"}, None)


def test_xml_values_may_contain_parameter_and_function_closers() -> None:
    value = "a </parameter> b\n</function> c\n</parameter>\nd"
    got = outcome(feed([(f"<tool_call>\n<function=write>\n<parameter=text>\n{value}\n</parameter>\n</function>\n"
                        "</tool_call>")]))
    assert got.calls[0]["args"] == {"text": value}
    assert got.calls[0]["end"] is None


def test_xml_missing_closers_are_recovered_at_the_next_marker_or_the_end() -> None:
    cases = {
        "<function=f>\n<parameter=a>\n1\n</function>\n</tool_call>": ({"a": "1"}, "missing </parameter>"),
        "<function=f>\n<parameter=a>1\n<parameter=b>2\n</parameter>\n</function>": (
            {"a": "1", "b": "2"}, "missing </parameter>"),
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</tool_call>": ({"a": "1"}, "missing </function>"),
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</function>": ({"a": "1"}, "missing </tool_call>"),
        "<tool_call>\n<function=f>\n<parameter=a>\n1": ({"a": "1"}, "stream ended"),
    }
    for text, (args, reason) in cases.items():
        got = outcome(feed([text]))
        assert (got.calls[0]["args"], got.calls[0]["end"]) == (args, reason), text
    got = outcome(feed(["<function=f>\n<parameter=a>\n1\n<function=g>\n</function>"]))
    assert [(c["name"], c["end"]) for c in got.calls] == [("f", "next <function= began"), ("g", None)]


def test_several_xml_calls_in_a_row() -> None:
    one = "<tool_call>\n<function={}>\n<parameter=n>\n{}\n</parameter>\n</function>\n</tool_call>"
    got = outcome(feed(["\n".join(one.format(f"f{i}", i) for i in range(3))]))
    assert [(c["name"], c["args"]) for c in got.calls] == [(f"f{i}", {"n": str(i)}) for i in range(3)]
    assert got.text == ""


def test_calls_inside_think_are_reasoning_not_calls() -> None:
    text = '<think>I could call <tool_call>{"name": "f"}</tool_call></think>Answer.'
    assert merged(feed([text])) == [("reasoning", 'I could call <tool_call>{"name": "f"}</tool_call>'),
                                    ("text", "Answer.")]
    assert merged(feed(["<think>never closed <function=f>"])) == [("reasoning", "never closed <function=f>")]


def test_a_call_after_the_reasoning_is_a_call() -> None:
    got = outcome(feed(['<think>plan</think>\n<tool_call>{"name": "f", "arguments": {}}</tool_call>']))
    assert (got.reasoning, got.text, got.calls[0]["name"]) == ("plan", "\n", "f")


def test_prose_that_mentions_the_tags_is_text() -> None:
    for text in ["Wrap calls in a <tool_call> tag.", "Use <tool_call> then a JSON object",
                 "<tool_call>\n\nno call here", "<function=\nx>", "a <function=> b", "<tool_call>"]:
        assert merged(feed([text])) == [("text", text)], text


def test_a_truncated_stream_closes_its_call_where_it_was_cut() -> None:
    text = '<tool_call>{"name": "search", "arguments": {"query": "weather in Par'
    assert merged(feed([text])) == [("start", 0, "call_0", "search"), ("args", 0, '{"query": "weather in Par"}'),
                                    ("end", 0, "stream ended")]
    for end in range(len(text) + 1):
        outcome(feed([text[:end]]))  # every prefix: well-formed events, JSON arguments


def test_id_prefix_names_the_calls() -> None:
    events = feed(["<function=f>\n</function>"], id_prefix="toolu_")
    assert events[0] == ("start", 0, "toolu_0", "f")
