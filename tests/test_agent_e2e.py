"""Generate with server-side tools against the real llama-server, SmolLM2, the
real sandbox and a SearXNG-format backend on loopback (issue 10).

The model is held to a tool-call markup format by ``tool_turn_grammar``:
the grammar makes it write the markup token by token, the streaming parser
heals it into a call, the sandbox runs it, and the last turn (no tools, no
grammar) answers freely.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import grpc
import pytest
from conftest import RunningService
from e2e import error_details, load
from loopback_http import Reply, loopback_server

from llamagate.server.settings import Settings, ToolSettings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc

SEARXNG_REPLY = {"query": "llama.cpp", "results": [
    {"title": "ggml-org/llama.cpp", "url": "https://github.com/ggml-org/llama.cpp",
     "content": "LLM inference in C/C++"}]}
HERMES = '<tool_call>\\n{{\\"name\\": \\"{name}\\", \\"arguments\\": {arguments}}}\\n</tool_call>'
QWEN3_CODER = ("<tool_call>\\n<function={name}>\\n<parameter={key}>\\n{value}\\n</parameter>\\n</function>\\n"
               "</tool_call>")


def gbnf(text: str) -> str:
    return f'root ::= "{text}"'


@pytest.fixture(scope="module")
def searxng():
    body = json.dumps(SEARXNG_REPLY).encode()
    with loopback_server({"/search": Reply(200, body, {"Content-Type": "application/json"})}) as server:
        yield server


@pytest.fixture(scope="module")
def service(llama_cpp_tree, smollm2_path, searxng):
    tools = ToolSettings(frozenset({"python", "web_search"}), searxng_url=searxng.base)
    running = RunningService(replace(Settings.from_env(os.environ), tools=tools))
    yield running
    running.close()


@pytest.fixture(scope="module")
def loaded(stub, smollm2_path):
    load(stub, smollm2_path, context_length=4096)
    return stub


def agent_request(question: str, tool: str, grammar: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        messages=[pb.Message(role=pb.ROLE_USER, text=question)],
        sampling=pb.Sampling(temperature=0.0, seed=1, max_tokens=48),
        server_tools=pb.ServerTools(names=[tool], max_iterations=1, tool_turn_grammar=grammar),
    )


def kinds(events) -> list[str]:
    return [e.WhichOneof("event") for e in events]


@pytest.mark.parametrize(
    "markup",
    [
        HERMES.format(name="python", arguments='{\\"code\\": \\"print(2+2)\\"}'),
        QWEN3_CODER.format(name="python", key="code", value="print(2+2)"),
        QWEN3_CODER.format(name="python", key="code", value="print(2+2)").removeprefix("<tool_call>\\n"),
    ],
    ids=["hermes json", "qwen3-coder xml", "bare function block"],
)
def test_a_python_call_in_markup_runs_in_the_sandbox_and_the_answer_follows(loaded, markup):
    events = list(loaded.Generate(agent_request("What is 2+2? Use python.", "python", gbnf(markup)), timeout=180))

    started = [e.tool_started for e in events if e.WhichOneof("event") == "tool_started"]
    finished = [e.tool_finished for e in events if e.WhichOneof("event") == "tool_finished"]
    assert [(s.name, json.loads(s.arguments), s.status) for s in started] == [
        ("python", {"code": "print(2+2)"}, "Running Python: print(2+2)")]
    assert [(f.id, f.result.strip(), f.failed) for f in finished] == [(started[0].id, "4", False)]
    order = kinds(events)
    assert order.index("tool_started") < order.index("tool_finished") < len(order) - 1
    answer = "".join(e.content_delta for e in events if e.WhichOneof("event") == "content_delta")
    assert "<tool_call>" not in answer and "<function=" not in answer and "</" not in answer
    done = events[-1].done
    assert done.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    # two turns: the call's tokens and the answer's add up
    assert done.usage.completion_tokens > len(markup) // 8 and done.usage.completion_tokens == done.timings.predicted_n


def test_a_web_search_goes_to_the_searxng_backend_and_its_results_come_back(loaded, searxng):
    markup = HERMES.format(name="web_search", arguments='{\\"query\\": \\"llama.cpp\\"}')
    events = list(loaded.Generate(agent_request("Find llama.cpp.", "web_search", gbnf(markup)), timeout=180))

    [started] = [e.tool_started for e in events if e.WhichOneof("event") == "tool_started"]
    [finished] = [e.tool_finished for e in events if e.WhichOneof("event") == "tool_finished"]
    assert started.status == "Searching: llama.cpp"
    assert not finished.failed and "1. ggml-org/llama.cpp" in finished.result
    assert any("q=llama.cpp" in seen.path for seen in searxng.seen)
    assert events[-1].WhichOneof("event") == "done"


def test_a_tool_the_service_has_not_enabled_names_the_field(loaded):
    request = agent_request("hi", "terminal", "")
    with pytest.raises(grpc.RpcError) as caught:
        list(loaded.Generate(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = error_details(caught.value)["BadRequest"].field_violations
    assert violation.field == "server_tools.names[0]" and "python, web_search" in violation.description


def test_a_service_without_code_tools_refuses_python(llama_cpp_tree, smollm2_path):
    plain = RunningService()  # the default: fetch_url only
    try:
        stub = llamagate_pb2_grpc.LlamaGateServiceStub(grpc.insecure_channel(plain.address))
        load(stub, smollm2_path, context_length=1024)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Generate(agent_request("hi", "python", ""), timeout=30))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not enabled" in caught.value.details()
    finally:
        plain.close()
