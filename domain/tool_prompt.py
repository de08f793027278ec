"""Tools offered in the prompt itself, for turns the engine cannot be told about tools.

That is a chat template without tools, or a turn constrained by a grammar
(llama-server takes one grammar: with tools it builds its own). The model is
shown the tools and the Hermes format in a system message, its calls come
back as markup in its text (healed by the streaming parser), and earlier
calls and results are written the same way, so the template needs no tool
support at all.
"""

from __future__ import annotations

import json

from llamagate.domain.chat import ChatMessage, Role, TextPart, Tool, ToolCall, text_message

_INTRO = ("You can call tools. The tools, as JSON Schema, are listed between <tools></tools>.\n<tools>\n{tools}\n</tools>\n"
          "To call a tool, write a JSON object with its name and arguments between <tool_call></tool_call> tags:\n"
          '<tool_call>\n{{"name": <tool name>, "arguments": <arguments object>}}\n</tool_call>\n'
          "A tool's result comes back in a message of its own.")


def tools_in_prompt(messages: tuple[ChatMessage, ...], tools: tuple[Tool, ...]) -> tuple[ChatMessage, ...]:
    """``messages`` with the tools described in the system message (one is
    added when there is none) and earlier calls and results written as text."""
    described = _INTRO.format(tools="\n".join(_tool_line(t) for t in tools))
    out = [_as_text(m) for m in messages]
    if out and out[0].role is Role.SYSTEM:
        out[0] = ChatMessage(Role.SYSTEM, (*out[0].parts, TextPart("\n\n" + described)))
    else:
        out.insert(0, text_message(Role.SYSTEM, described))
    return tuple(out)


def _tool_line(tool: Tool) -> str:
    parameters = json.loads(tool.parameters) if tool.parameters else {"type": "object", "properties": {}}
    return json.dumps({"name": tool.name, "description": tool.description, "parameters": parameters},
                      ensure_ascii=False)


def _as_text(message: ChatMessage) -> ChatMessage:
    if message.role is Role.ASSISTANT and message.tool_calls:
        markup = "".join(_call_markup(c) for c in message.tool_calls)
        return ChatMessage(Role.ASSISTANT, (*message.parts, TextPart(markup)), message.reasoning)
    if message.role is Role.TOOL:
        return ChatMessage(Role.USER, (TextPart("<tool_response>\n"), *message.parts, TextPart("\n</tool_response>")))
    return message


def _call_markup(call: ToolCall) -> str:
    return f'<tool_call>\n{{"name": {json.dumps(call.name)}, "arguments": {call.arguments or "{}"}}}\n</tool_call>'
