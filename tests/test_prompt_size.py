"""The size of a conversation's text (issue 13): counted, and bounded by a setting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.chat import ChatMessage, ImagePart, Role, TextPart, ToolCall
from llamagate.domain.errors import RequestTooLarge
from llamagate.domain.request_checks import check_prompt_size, prompt_bytes


@given(st.lists(st.text(max_size=40), max_size=6), st.text(max_size=20))
def test_the_prompt_size_is_the_utf8_bytes_of_all_text_and_never_the_images(texts, reasoning):
    message = ChatMessage(Role.ASSISTANT, (*(TextPart(t) for t in texts), ImagePart(b"\x89PNG" + b"x" * 1000)),
                          reasoning=reasoning, tool_calls=(ToolCall("c1", "f", '{"a": "é"}'),))
    expected = sum(len(t.encode()) for t in texts) + len(reasoning.encode()) + 1 + len('{"a": "é"}'.encode())
    assert prompt_bytes((message,)) == expected


def test_a_conversation_over_the_limit_is_refused_naming_the_setting():
    messages = (ChatMessage(Role.USER, (TextPart("é" * 600),)),)  # 1,200 bytes
    check_prompt_size(messages, 1200, "LLAMAGATE_MAX_PROMPT_BYTES")
    check_prompt_size(messages, 0, "LLAMAGATE_MAX_PROMPT_BYTES")  # 0: no limit
    with pytest.raises(RequestTooLarge, match="1,200 bytes.*1,199 bytes.*LLAMAGATE_MAX_PROMPT_BYTES"):
        check_prompt_size(messages, 1199, "LLAMAGATE_MAX_PROMPT_BYTES")


def test_the_service_refuses_a_conversation_over_its_bound_before_any_model_is_asked(tmp_path):
    import os
    from dataclasses import replace

    import grpc
    from conftest import RunningService
    from e2e import ask, error_details

    from llamagate.server.settings import Settings
    from llamagate.v1 import llamagate_pb2 as pb
    from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

    settings = replace(Settings.from_env({**os.environ, "LLAMAGATE_MAX_PROMPT_BYTES": "100"}))
    service = RunningService(settings)
    try:
        stub = pb_grpc.LlamaGateServiceStub(grpc.insecure_channel(service.address))
        for call in (lambda: list(stub.Generate(ask("x" * 101), timeout=10)),
                     lambda: stub.CountTokens(pb.CountTokensRequest(messages=ask("x" * 101).messages), timeout=10)):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "LLAMAGATE_MAX_PROMPT_BYTES" in caught.value.details()
            assert error_details(caught.value)["ErrorInfo"].reason == "REQUEST_TOO_LARGE"
        with pytest.raises(grpc.RpcError) as caught:  # within the bound: it reaches the (empty) service
            list(stub.Generate(ask("x" * 100), timeout=10))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        service.close()
