"""Checking a chat request before anything is sent: every bad field named by its path.

Each rule raises ``InvalidArgument`` with ``field`` set to where the problem
is ("messages[2].parts[0]", "sampling.dry.base"), so a client can point at
it (the gRPC edge sends it as a BadRequest field violation).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields, replace

from llamagate.domain.capabilities import Capabilities
from llamagate.domain.chat import (
    ChatMessage,
    Dry,
    FormatKind,
    GenerateRequest,
    ImagePart,
    Range,
    Role,
    Sampling,
    ServerTools,
    TextPart,
    Tool,
    ToolChoiceMode,
)
from llamagate.domain.errors import EngineRejected, InvalidArgument, LlamagateError, RequestTooLarge

_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)
IMAGE_TYPES = tuple(mime for _, mime in _IMAGE_MAGIC)
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOP_LOGPROBS = 20
# llama-server compiles these on its main loop before the first token: one
# large enough stalls it for seconds, long enough for the watchdog to take it
# for frozen (1,000 DRY breakers, a 200 KB enum schema were measured so).
MAX_SEQUENCE_BREAKERS = 64
MAX_BREAKER_CHARS = 128
MAX_SCHEMA_BYTES = 32 << 10


def image_mime(data: bytes) -> str | None:
    """The image type its first bytes say (None: not an image we take)."""
    mime = next((mime for magic, mime in _IMAGE_MAGIC if data.startswith(magic)), None)
    if mime == "image/webp" and data[8:12] != b"WEBP":
        return None  # RIFF holds sound and video too (WAVE, AVI): WebP says so at byte 8
    return mime


def validate(request: GenerateRequest, caps: Capabilities, slot_context: int = 0, *,
             tools_in_prompt: bool = False) -> None:
    """Raise InvalidArgument naming the first bad field. ``slot_context``:
    the tokens one slot of the loaded model holds (0: unknown).
    ``tools_in_prompt``: tools may be offered in the prompt (the agent loop
    does so), so a template without tools is no obstacle."""
    check_messages(request.messages, caps)
    check_tools(request, caps if not tools_in_prompt else replace(caps, tools=True))
    _check_format(request)
    check_sampling(request.sampling, slot_context)
    effort = request.reasoning.reasoning_effort
    if effort not in (None, "low", "medium", "high"):
        raise InvalidArgument(f"must be low, medium or high, got {effort!r}", field="reasoning.reasoning_effort")


def check_messages(messages: tuple[ChatMessage, ...], caps: Capabilities) -> None:
    if not messages:
        raise InvalidArgument("is empty: send at least one message", field="messages")
    call_ids: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        _check_parts(message, where, caps)
        _check_role_fields(message, where, call_ids)
        call_ids.update(call.id for call in message.tool_calls if call.id)


def _check_parts(message: ChatMessage, where: str, caps: Capabilities) -> None:
    for j, part in enumerate(message.parts):
        if not isinstance(part, ImagePart):
            continue
        at = f"{where}.parts[{j}].image"
        if message.role is Role.ASSISTANT:
            raise InvalidArgument("an assistant message cannot carry images", field=at)
        if not caps.vision:
            raise InvalidArgument("the loaded model has no vision projector (load it with mmproj_path)", field=at)
        detected = image_mime(part.data)
        if detected is None:
            raise InvalidArgument("not a PNG, JPEG, GIF or WebP image", field=f"{at}.data")
        if part.mime and part.mime.lower() != detected:
            raise InvalidArgument(f"says {part.mime!r} but the bytes are {detected}", field=f"{at}.mime_type")


def _check_role_fields(message: ChatMessage, where: str, earlier_ids: set[str]) -> None:
    if message.role is not Role.ASSISTANT:
        if message.tool_calls:
            raise InvalidArgument("only assistant messages carry tool calls", field=f"{where}.tool_calls")
        if message.reasoning:
            raise InvalidArgument("only assistant messages carry reasoning", field=f"{where}.reasoning")
    seen: set[str] = set()
    for k, call in enumerate(message.tool_calls):
        if not _TOOL_NAME.fullmatch(call.name):
            raise InvalidArgument(f"must be 1 to 64 of a-z, A-Z, 0-9, _ and -, got {call.name!r}",
                                  field=f"{where}.tool_calls[{k}].name")
        if call.id and call.id in seen:  # across turns, ids may repeat (templates number them per turn)
            raise InvalidArgument(f"the id {call.id!r} is used twice in this message", field=f"{where}.tool_calls[{k}].id")
        seen.add(call.id)
        _json_object(call.arguments, f"{where}.tool_calls[{k}].arguments")
    if message.role is Role.TOOL:
        if not message.tool_call_id:
            raise InvalidArgument("is empty: a tool message answers a call by its id", field=f"{where}.tool_call_id")
        if message.tool_call_id not in earlier_ids:
            raise InvalidArgument(f"no earlier assistant tool call has the id {message.tool_call_id!r}",
                                  field=f"{where}.tool_call_id")
    elif message.tool_call_id:
        raise InvalidArgument("only tool messages answer a tool call", field=f"{where}.tool_call_id")


def check_tools(request: GenerateRequest, caps: Capabilities) -> None:
    names: set[str] = set()
    for i, tool in enumerate(request.tools):
        _check_tool(tool, f"tools[{i}]")
        if tool.name in names:
            raise InvalidArgument(f"the name {tool.name!r} is used twice", field=f"tools[{i}].name")
        names.add(tool.name)
    if request.tools and not caps.tools:
        raise InvalidArgument("the loaded model's chat template does not support tools "
                              "(load it with a chat_template that does)", field="tools")
    choice = request.tool_choice
    if choice.name and choice.name not in names:
        raise InvalidArgument(f"{choice.name!r} is not one of the request's tools", field="tool_choice.name")
    if choice.mode is ToolChoiceMode.REQUIRED and not request.tools:
        raise InvalidArgument("REQUIRED needs at least one tool in tools", field="tool_choice.mode")


def _check_tool(tool: Tool, where: str) -> None:
    if not _TOOL_NAME.fullmatch(tool.name):
        raise InvalidArgument(f"must be 1 to 64 of a-z, A-Z, 0-9, _ and -, got {tool.name!r}", field=f"{where}.name")
    if tool.parameters:
        _json_object(tool.parameters, f"{where}.parameters")


def check_server_tools(request: GenerateRequest, enabled: frozenset[str]) -> None:
    """Server-side tools: each enabled here, named once, apart from the client's tools."""
    spec = request.server_tools
    if spec is None:
        return
    if not spec.names:
        raise InvalidArgument("name at least one tool the service runs", field="server_tools.names")
    client = {t.name for t in request.tools}
    for i, name in enumerate(spec.names):
        where = f"server_tools.names[{i}]"
        if name not in enabled:
            have = ", ".join(sorted(enabled)) or "none"
            raise InvalidArgument(f"{name!r} is not enabled on this service (enabled: {have})", field=where)
        if name in client or name in spec.names[:i]:
            raise InvalidArgument(f"{name!r} is named twice (or is also a client tool)", field=where)
    _check_ranges(spec, "server_tools")
    if request.sampling.top_logprobs is not None:
        raise InvalidArgument("logprobs are not streamed for the turns of an agent loop", field="sampling.top_logprobs")
    if request.response_format.kind is not FormatKind.TEXT:
        raise InvalidArgument("is not taken with server tools: use server_tools.tool_turn_grammar for tool turns",
                              field="response_format")


def _check_format(request: GenerateRequest) -> None:
    fmt = request.response_format
    if fmt.kind is FormatKind.JSON_SCHEMA:
        if len(fmt.text.encode()) > MAX_SCHEMA_BYTES:
            raise InvalidArgument(f"is over {MAX_SCHEMA_BYTES:,} bytes: llama-server compiles it before the first"
                                  " token, and one this large stalls it", field="response_format.json_schema")
        _json_object(fmt.text, "response_format.json_schema")
    if fmt.kind is FormatKind.GRAMMAR and not fmt.text.strip():
        raise InvalidArgument("is empty", field="response_format.grammar")
    if request.server_tools is not None and request.server_tools.tool_turn_grammar \
            and not request.server_tools.tool_turn_grammar.strip():
        raise InvalidArgument("is only whitespace", field="server_tools.tool_turn_grammar")
    if fmt.kind is FormatKind.GRAMMAR and _calls_possible(request):
        # llama-server constrains a reply with one grammar: the tool calls' own.
        raise InvalidArgument("a grammar cannot be combined with tools (unless tool_choice is NONE)",
                              field="response_format.grammar")
    if request.sampling.top_logprobs is not None and _calls_possible(request):
        # llama-server refuses it ("logprobs is not supported with tools + stream",
        # server-common.cpp), and every call here streams.
        raise InvalidArgument("log probabilities cannot be combined with tools (unless tool_choice is NONE)",
                              field="sampling.top_logprobs")


def _calls_possible(request: GenerateRequest) -> bool:
    """Tools go to the engine (tool_choice NONE sends none: ``generation.chat_call``)."""
    return bool(request.tools) and request.tool_choice.mode is not ToolChoiceMode.NONE


def _json_object(text: str, field: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InvalidArgument(f"not valid JSON ({error})", field=field) from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"must be a JSON object, got {type(value).__name__}", field=field)
    return value


def check_sampling(s: Sampling, slot_context: int) -> None:
    _check_ranges(s, "sampling")
    _check_ranges(s.dry, "sampling.dry")
    breakers = s.dry.sequence_breakers
    if len(breakers) > MAX_SEQUENCE_BREAKERS or any(len(b) > MAX_BREAKER_CHARS for b in breakers):
        raise InvalidArgument(f"at most {MAX_SEQUENCE_BREAKERS} breakers of at most {MAX_BREAKER_CHARS} characters",
                              field="sampling.dry.sequence_breakers")
    if any(not stop for stop in s.stop):
        raise InvalidArgument("an empty stop string would end every reply before it began", field="sampling.stop")
    if s.max_tokens is not None and slot_context and s.max_tokens > slot_context:
        raise InvalidArgument(f"{s.max_tokens} is more than a slot of the loaded model holds ({slot_context} tokens)",
                              field="sampling.max_tokens")
    for i, (token, bias) in enumerate(s.logit_bias):
        if token < 0:
            raise InvalidArgument(f"token ids are not negative, got {token}", field=f"sampling.logit_bias[{i}].token")
        if not math.isfinite(bias):
            raise InvalidArgument(f"must be a finite number, got {bias}", field=f"sampling.logit_bias[{i}].bias")


def _check_ranges(values: Sampling | Dry | ServerTools, prefix: str) -> None:
    for f in fields(values):
        if "range" in f.metadata:
            _check(getattr(values, f.name), f"{prefix}.{f.name}", f.metadata["range"])


def _check(value: float | None, name: str, valid: Range) -> None:
    if value is None:
        return
    if not math.isfinite(value):  # NaN and ±inf have no meaning here (nor any JSON spelling)
        raise InvalidArgument(f"must be a finite number, got {value}", field=name)
    too_low = value <= valid.low if valid.above else value < valid.low
    if too_low or (valid.high is not None and value > valid.high):
        lower = f"> {valid.low}" if valid.above else f">= {valid.low}"
        bound = lower if valid.high is None else f"between {valid.low} and {valid.high}"
        raise InvalidArgument(f"must be {bound}, got {value}", field=name)


def rejected_field(error: EngineRejected, request: GenerateRequest) -> LlamagateError:
    """What the engine refused, as a field violation where its message says
    which field it was (its grammar, its schema, an image); else as it came."""
    text, fmt = str(error).lower(), request.response_format
    if fmt.kind is FormatKind.GRAMMAR and "grammar" in text:
        field = "response_format.grammar"
    elif fmt.kind is FormatKind.JSON_SCHEMA and ("schema" in text or "grammar" in text):
        field = "response_format.json_schema"
    elif "image" in text and any(m.images for m in request.messages):
        field = "messages"
    else:
        return error
    return InvalidArgument(str(error), field=field)


def prompt_bytes(messages: tuple[ChatMessage, ...]) -> int:
    """The UTF-8 bytes of a conversation's text: every text part, reasoning
    and tool call (images are bounded by the message size limit instead)."""
    total = 0
    for message in messages:
        total += sum(len(p.text.encode()) for p in message.parts if isinstance(p, TextPart))
        total += len(message.reasoning.encode())
        total += sum(len(c.name.encode()) + len(c.arguments.encode()) for c in message.tool_calls)
    return total


def check_prompt_size(messages: tuple[ChatMessage, ...], limit: int, setting: str) -> None:
    """Raise RequestTooLarge when the conversation's text exceeds ``limit`` bytes (0: no limit)."""
    size = prompt_bytes(messages)
    if limit and size > limit:
        raise RequestTooLarge(f"the conversation's text is {size:,} bytes, more than this service accepts"
                              f" ({limit:,} bytes); send less or raise {setting}")
