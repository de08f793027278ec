"""web_search through SearXNG's JSON API (issue 10), against a fake SearXNG
on 127.0.0.1 that answers in the real response's shape."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import pytest
from loopback_http import Reply, loopback_server

from llamagate.adapters.tools import build_tools
from llamagate.adapters.tools.search_backend import SearchHit
from llamagate.adapters.tools.searxng import SearxngBackend
from llamagate.adapters.tools.web_search import WebSearchTool, format_hits

# The envelope and result fields SearXNG's /search?format=json returns (searx/webapp.py, results.py)
SEARXNG_REPLY = {
    "query": "llama.cpp server",
    "number_of_results": 0,
    "results": [
        {
            "url": "https://github.com/ggml-org/llama.cpp",
            "title": "ggml-org/llama.cpp: LLM inference in C/C++",
            "content": "Inference of Meta's LLaMA model (and others) in pure C/C++.\n  Supports many backends.",
            "engine": "duckduckgo",
            "parsed_url": ["https", "github.com", "/ggml-org/llama.cpp", "", "", ""],
            "template": "default.html",
            "engines": ["duckduckgo", "brave"],
            "positions": [1, 2],
            "publishedDate": None,
            "thumbnail": "",
            "score": 4.0,
            "category": "general",
        },
        {
            "url": "https://github.com/ggml-org/llama.cpp/tree/master/tools/server",
            "title": "llama.cpp/tools/server",
            "content": "Fast, lightweight, pure C/C++ HTTP server based on httplib.",
            "engine": "brave",
            "parsed_url": ["https", "github.com", "/ggml-org/llama.cpp/tree/master/tools/server", "", "", ""],
            "template": "default.html",
            "engines": ["brave"],
            "positions": [2],
            "score": 0.5,
            "category": "general",
        },
        {"url": "https://example.org/no-snippet", "title": "", "engine": "qwant", "category": "general"},
        {"title": "no url: skipped", "content": "an infobox-like entry"},
    ],
    "answers": [],
    "corrections": [],
    "infoboxes": [],
    "suggestions": ["llama.cpp server docker"],
    "unresponsive_engines": [["google", "timeout"]],
}


def run(coroutine):
    return asyncio.run(coroutine)


def search(base: str, arguments: dict, timeout_s: float = 10, **options):
    return run(WebSearchTool(SearxngBackend(base), **options).run(arguments, timeout_s=timeout_s))


def json_reply(payload: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def test_results_come_back_as_a_numbered_list():
    with loopback_server({"/search": json_reply(SEARXNG_REPLY)}) as server:
        result = search(server.base, {"query": "llama.cpp server"})
        (seen,) = server.seen
    assert not result.failed
    query = parse_qs(urlsplit(seen.path).query)
    assert query == {"q": ["llama.cpp server"], "format": ["json"]}
    assert result.text == (
        "Results for: llama.cpp server\n"
        "\n1. ggml-org/llama.cpp: LLM inference in C/C++\n   https://github.com/ggml-org/llama.cpp\n"
        "   Inference of Meta's LLaMA model (and others) in pure C/C++. Supports many backends.\n"
        "\n2. llama.cpp/tools/server\n   https://github.com/ggml-org/llama.cpp/tree/master/tools/server\n"
        "   Fast, lightweight, pure C/C++ HTTP server based on httplib.\n"
        "\n3. https://example.org/no-snippet\n   https://example.org/no-snippet"
    )


def test_a_base_url_with_a_path_searches_below_it():
    with loopback_server({"/searxng/search": json_reply(SEARXNG_REPLY)}) as server:
        result = search(f"{server.base}/searxng/", {"query": "x"}, max_results=1)
    assert not result.failed and "2." not in result.text


def test_no_results_is_said_and_not_a_failure():
    with loopback_server({"/search": json_reply({**SEARXNG_REPLY, "results": []})}) as server:
        result = search(server.base, {"query": "nothing"})
    assert (result.text, result.failed) == ("No results for: nothing", False)


def test_a_missing_query_is_no_query_provided():
    result = run(WebSearchTool(SearxngBackend("http://127.0.0.1:9")).run({"url": "https://x"}, timeout_s=5))
    assert (result.text, result.failed) == ("No query provided", True)


def test_json_format_turned_off_in_searxng_says_how_to_turn_it_on():
    with loopback_server({"/search": Reply(403, b"Forbidden")}) as server:
        result = search(server.base, {"query": "x"})
    assert result.failed and result.text.startswith("Search failed") and "search.formats" in result.text


@pytest.mark.parametrize("reply", [
    Reply(500, b"oops"),
    Reply(200, b"<html>not json</html>", {"Content-Type": "text/html"}),
    json_reply({"results": "not a list"}),
    json_reply(["no", "envelope"]),
])
def test_a_bad_reply_is_a_failed_search(reply):
    with loopback_server({"/search": reply}) as server:
        result = search(server.base, {"query": "x"})
    assert result.failed and result.text.startswith("Search failed")


def test_an_unreachable_searxng_is_a_failed_search():
    with loopback_server({}) as server:
        base = server.base
    result = search(base, {"query": "x"})  # the server is gone: connection refused
    assert result.failed and result.text.startswith("Search failed") and "could not be reached" in result.text


def test_a_searxng_that_never_answers_times_out():
    with loopback_server({"/search": Reply(hang=True)}) as server:
        result = search(server.base, {"query": "x"}, timeout_s=0.5)
    assert result.failed and result.text == "Search failed: no answer within 0.5 s"


def test_long_snippets_are_cut():
    text = format_hits("q", [SearchHit("t", "https://u", "word " * 200)])
    assert text.endswith("…") and len(text) < 400


def test_a_searxng_url_must_be_http():
    with pytest.raises(ValueError, match="SearXNG"):
        SearxngBackend("searxng:8080")


def test_build_tools_wires_web_search_and_fetch_url_without_a_sandbox():
    toolbox = build_tools({"web_search", "fetch_url"}, searxng_url="http://127.0.0.1:9")
    assert toolbox.names == {"web_search", "fetch_url"} and toolbox.sandbox_mode is None
    assert set(toolbox.definitions()) == {"web_search", "fetch_url"}
    assert json.loads(toolbox.definitions()["web_search"].parameters)["required"] == ["query"]
