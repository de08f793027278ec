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
