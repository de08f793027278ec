"""Clients in Go, TypeScript and Java, built from proto/ alone, against the real service.

Each example program (clients/go, clients/node, clients/java) is built here
the way its README says: Go and TypeScript stubs generated from proto/ by
the pinned buf (buildsys/buf), Java's by protoc and protoc-gen-grpc-java
from Maven Central (`mvn package`), then compiled. It prints every event and
every error as one JSON line, so one set of assertions judges every
language. A missing Go, Node.js, JDK or Maven fails the test: a client that
cannot be built must not pass CI. Builds reuse the default Go, npm and Maven
caches: the first takes a minute or two, later ones seconds (Maven's about
25 s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from e2e import engine, load, wait_until

from llamagate.v1 import llamagate_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
BUF = str(ROOT / "buildsys" / "buf")


def run(command: list[str], cwd: Path, timeout: float = 600) -> None:
    done = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} in {cwd} failed:\n{done.stdout}\n{done.stderr}"


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed to build the example clients (clients/)")


def build_go(out: Path) -> list[str]:
    need("go", "npm")  # npm: buildsys/buf installs buf from npm
    source = ROOT / "clients" / "go"
    run([BUF, "generate"], source)  # the protoc plugins: go.mod's `tool` lines
    run(["go", "build", "-buildvcs=false", "-o", str(out / "example"), "./cmd/example"], source)
    return [str(out / "example")]


def build_node() -> list[str]:
    need("node", "npm")
    source = ROOT / "clients" / "node"
    # --prefer-offline: packages already in npm's cache are not checked again.
    run(["npm", "ci", "--prefer-offline", "--ignore-scripts", "--no-audit", "--no-fund"], source)
    run(["npm", "run", "build"], source)
    return ["node", str(source / "dist" / "example.js")]


def build_java() -> list[str]:
    need("java", "mvn")
    source = ROOT / "clients" / "java"
    run(["mvn", "-B", "-q", "package"], source)  # -B: no colours or progress in the log
    return ["java", "-jar", str(source / "target" / "llamagate-example.jar")]


@pytest.fixture(scope="module", params=["go", "node", "java"])
def client(request, tmp_path_factory) -> list[str]:
    if request.param == "go":
        return build_go(tmp_path_factory.mktemp("go-client"))
    if request.param == "node":
        return build_node()
    return build_java()


@pytest.fixture(scope="module")
def model(stub, smollm2_path, llama_cpp_tree):
    """Loads SmolLM2 for tools or for chat, unless it is loaded so already.

    SmolLM2's own template has no tools: for them, functionary v3.2's from
    the llama.cpp tree, whose output parser in turn rejects plain replies.
    One slot (parallel 1): a cancelled generation that kept it would hold
    up the next.
    """
    functionary = (llama_cpp_tree / "models" / "templates" / "meetkai-functionary-medium-v3.2.jinja").read_text()
    loaded: list[bool] = []

    def load_for(tools: bool) -> None:
        if loaded != [tools]:
            load(stub, smollm2_path, context_length=2048, parallel=1, chat_template=functionary if tools else "")
            loaded[:] = [tools]

    return load_for


def run_client(client: list[str], service, *args: str) -> tuple[int, list[dict]]:
    done = subprocess.run([*client, service.address, *args], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def test_a_required_tool_streams_its_call_with_the_arguments_the_schema_allows(client, service, model):
    model(tools=True)
    status, lines = run_client(client, service, "weather")

    assert status == 0, lines
    deltas = [line for line in lines if line["type"] == "tool_call_delta"]
    assert deltas and {d["index"] for d in deltas} == {0}
    assert deltas[0]["name"] == "get_weather" and deltas[0]["id"]
    assert json.loads("".join(d["arguments_delta"] for d in deltas)) == {"city": "Paris"}
    assert lines[-1]["type"] == "done" and lines[-1]["finish_reason"] == "FINISH_REASON_TOOL_CALLS"


def test_a_plain_question_streams_content_deltas_then_done(client, service, model):
    model(tools=False)
    status, lines = run_client(client, service, "chat", "Name a colour.")

    assert status == 0, lines
    assert "".join(line["text"] for line in lines if line["type"] == "content_delta").strip()
    assert lines[-1]["type"] == "done" and lines[-1]["finish_reason"] in ("FINISH_REASON_STOP", "FINISH_REASON_LENGTH")
    assert lines[-1]["completion_tokens"] > 0 and lines[-1]["request_id"]


def test_a_bad_field_comes_back_as_a_bad_request_naming_it(client, service, model):
    model(tools=False)
    status, lines = run_client(client, service, "bad-temperature")

    assert status == 1 and len(lines) == 1
    error = lines[0]
    assert error["type"] == "error" and error["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in error["field_violations"]] == ["sampling.temperature"]
    assert error["field_violations"][0]["description"]
    assert (error.get("reason"), error.get("domain")) == ("INVALID_ARGUMENT", "llamagate.dev")


def in_flight(stub) -> int:
    return sum(entry.in_flight for entry in stub.ListModels(pb.ListModelsRequest(), timeout=30).models)


def test_a_cancel_after_the_first_delta_frees_the_only_slot_for_the_next_call(client, service, stub, model):
    model(tools=False)
    status, lines = run_client(client, service, "cancel")

    assert status == 0, lines
    assert lines[-1] == {"type": "cancelled", "code": "CANCELLED"}, lines
    assert [line["type"] for line in lines[:-1]] == ["content_delta"]  # cancelled at the first, before any done
    # Free in llamagate (no generation streaming or queued) and in llama-server
    # (its one slot idle). The reply asked for 2,000 tokens, which takes SmolLM2
    # well over wait_until's bound here: only the cancel ends it that soon.
    assert wait_until(lambda: in_flight(stub) == 0)
    child = engine(stub.ListModels(pb.ListModelsRequest(), timeout=30).models[0].info.pid)
    assert wait_until(lambda: not any(slot["is_processing"] for slot in child.get("/slots").json()))
    status, lines = run_client(client, service, "chat", "Name a colour.")
    assert status == 0 and lines[-1]["type"] == "done", lines
