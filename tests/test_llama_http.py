"""Decoding llama-server's SSE stream (SPEC §12)."""

import json

from hypothesis import given
from hypothesis import strategies as st

from llamagate.adapters.llama_http import DONE, chunk_from_json, parse_sse_line
from llamagate.domain.chat import Usage


def test_sse_lines():
    assert parse_sse_line('data: {"a": 1}') == {"a": 1}
    assert parse_sse_line("data: [DONE]") is DONE
    assert parse_sse_line("data: {broken") is None
    assert parse_sse_line(": keep-alive") is None
    assert parse_sse_line("") is None


@given(st.text())
def test_no_line_crashes_the_parser(line):
    result = parse_sse_line(line)
    assert result is None or result is DONE or isinstance(result, dict)


def test_a_real_llama_server_chunk_shape():
    final = json.loads(
        '{"choices":[],"created":1,"id":"x","model":"m","object":"chat.completion.chunk",'
        '"usage":{"completion_tokens":12,"prompt_tokens":31,"total_tokens":43},'
        '"timings":{"prompt_n":31,"prompt_ms":40.1,"predicted_n":12,"predicted_ms":80.5,'
        '"predicted_per_second":149.1,"prompt_per_second":773.0,"cache_n":0}}'
    )
    chunk = chunk_from_json(final)
    assert chunk.usage == Usage(31, 12, 43)
    assert chunk.timings.predicted_n == 12 and chunk.content == ""

    delta = chunk_from_json({"choices": [{"delta": {"reasoning_content": "hm", "content": None}, "finish_reason": None}]})
    assert (delta.reasoning, delta.content, delta.finish_reason) == ("hm", "", None)
