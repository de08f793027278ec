"""The service's log lines (issue 13): JSON objects a collector reads, each
line of a request carrying its id, and never a prompt, a token or a key."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
from dataclasses import replace

import grpc
import pytest
from conftest import RunningService
from e2e import ask
from hub_server import ACCESS_TOKEN, GATED_REPO
from hypothesis import given
from hypothesis import strategies as st

from llamagate.server.logs import JsonFormatter, log_handler, request_context, set_model
from llamagate.server.observability import metrics_address
from llamagate.server.request_id import REQUEST_ID_KEY
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc


def record(message: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("llamagate.test", level, __file__, 1, message, args, None)


@given(st.text(), st.lists(st.one_of(st.text(), st.integers(), st.floats(allow_nan=False)), max_size=3))
def test_any_message_is_one_line_that_parses_back_to_it(text, args):
    message = "%s" * len(args) + text.replace("%", "%%")
    line = JsonFormatter().format(record(message, *args))
    assert "\n" not in line and "\r" not in line
    parsed = json.loads(line)
    assert parsed["message"] == record(message, *args).getMessage()
    assert parsed["level"] == "INFO" and parsed["logger"] == "llamagate.test" and parsed["time"].endswith("Z")


def test_an_exception_goes_with_its_line():
    try:
        raise ValueError("broken")
    except ValueError:
        line = JsonFormatter().format(logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()))
    parsed = json.loads(line)
    assert parsed["message"] == "failed" and "ValueError: broken" in parsed["exception"]


def captured(log_format: str = "json") -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(f"llamagate.test.{log_format}")
    logger.handlers[:] = [log_handler(log_format, stream)]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_each_task_logs_its_own_request_id_and_model_and_lines_outside_a_request_have_none():
    logger, stream = captured()

    async def request(request_id: str, model: str) -> None:
        with request_context(request_id):
            logger.info("accepted")
            set_model(model)
            await asyncio.sleep(0.01)  # the other request runs meanwhile
            logger.info("answered")

    async def main() -> None:
        await asyncio.gather(request("r1", "chat"), request("r2", "embed"))

    asyncio.run(main())
    logger.info("between requests")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_message = {(line["message"], line.get("request_id")): line for line in lines}
    assert set(by_message) == {("accepted", "r1"), ("accepted", "r2"), ("answered", "r1"), ("answered", "r2"),
                               ("between requests", None)}
    assert "model" not in by_message["accepted", "r1"]  # not known yet
    assert by_message["answered", "r1"]["model"] == "chat" and by_message["answered", "r2"]["model"] == "embed"
    assert "model" not in by_message["between requests", None]


def test_auto_is_json_off_a_terminal_and_text_keeps_its_shape():
    logger, stream = captured("auto")  # a StringIO is no terminal
    logger.info("hello %d", 1)
    assert json.loads(stream.getvalue())["message"] == "hello 1"
    logger, stream = captured("text")
    logger.info("hello %d", 1)
    assert stream.getvalue() == "INFO llamagate.test.text: hello 1\n"


# -- the real service: nothing secret in any line ------------------------------------------

PROMPT = "Describe the quokka-zebra-7731 protocol in one word."


@pytest.fixture
def every_line():
    """Every record of every logger, debug included (llama-server's own output
    and httpx's requests too), as the service's JSON lines."""
    stream = io.StringIO()
    handler = log_handler("json", stream)
    root = logging.getLogger()
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "huggingface_hub")}
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in noisy:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)
    for name, was in noisy.items():
        logging.getLogger(name).setLevel(was)


@pytest.mark.engine
def test_no_line_carries_the_prompt_or_the_hub_token_and_a_requests_lines_carry_its_id(hf_cache, llama_cpp_tree,
                                                                                      every_line):
    settings = Settings.from_env(os.environ)
    settings = replace(settings, observability=replace(settings.observability, metrics=metrics_address("127.0.0.1:0")))
    service = RunningService(settings)
    try:
        stub = pb_grpc.LlamaGateServiceStub(grpc.insecure_channel(service.address))
        source = pb.HubSource(repo=GATED_REPO, token=ACCESS_TOKEN)
        loaded = list(stub.LoadModel(pb.LoadModelRequest(hub=source, options=pb.LoadOptions(context_length=1024)),
                                     timeout=300))
        call = stub.Generate(ask(PROMPT, max_tokens=8), timeout=60)
        events = list(call)
        request_id = dict(call.initial_metadata())[REQUEST_ID_KEY]
    finally:
        service.close()
    assert events[-1].WhichOneof("event") == "done" and loaded[-1].model.state == pb.MODEL_STATE_READY

    text = every_line.getvalue()
    assert ACCESS_TOKEN not in text
    assert PROMPT not in text and "quokka-zebra-7731" not in text
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    ours = [line for line in lines if line.get("request_id") == request_id]
    assert {line["logger"] for line in ours} >= {"llamagate.server.service", "httpx"}  # its lines, in every layer
    assert all(line.get("model") for line in ours if "generate" in line["message"] and "tokens" in line["message"])
    assert all(line.get("request_id") == request_id for line in lines
               if line["logger"] == "llamagate.server.service" and request_id in line["message"])
