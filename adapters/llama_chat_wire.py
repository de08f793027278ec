"""llama-server's chat JSON both ways (SPEC §12, §13): the request body built
from a ChatCall, and one ``chat.completion.chunk`` decoded into a ChatChunk.

Decoding is defensive: whatever a field holds (null, the wrong type), the
chunk decodes; a field that is not what it should be counts as absent.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping

from llamagate.domain.batching import PromptStep
from llamagate.domain.chat import (
    CallMessage,
    ChatCall,
    ChatChunk,
    FinishReason,
    FormatKind,
    Image,
    ResolvedSampling,
    Role,
    TextPart,
    Timings,
    TokenAlternative,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
    Usage,
)

# The OpenAI chat API's words, as llama-server spells them.
_ROLE = {Role.SYSTEM: "system", Role.USER: "user", Role.ASSISTANT: "assistant", Role.TOOL: "tool"}
_TOOL_CHOICE = {ToolChoiceMode.AUTO: "auto", ToolChoiceMode.NONE: "none", ToolChoiceMode.REQUIRED: "required"}
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "tool_calls": FinishReason.TOOL_CALLS}

# --- the request ---------------------------------------------------------


def chat_body(call: ChatCall) -> dict[str, object]:
    """The JSON body for ``/v1/chat/completions`` (streaming, usage included)."""
    body: dict[str, object] = {
        "messages": [_message_json(m) for m in call.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        # A progress chunk after every decode of the prompt: llama-server
        # notices a closed connection only when it has something to write,
        # so without these a cancel waits until the whole prompt is done.
        "return_progress": True,
        "max_tokens": call.max_tokens,
        **sampling_json(call.sampling),
        **_tools_json(call),
        **_format_json(call),
    }
    if call.wall_clock_limit_ms > 0:
        body["t_max_predict_ms"] = call.wall_clock_limit_ms
    if call.stop:
        body["stop"] = list(call.stop)
    if call.template_kwargs:
        body["chat_template_kwargs"] = dict(call.template_kwargs)
    return body


def template_body(call: ChatCall) -> dict[str, object]:
    """What the chat template sees of ``call``: for token counting."""
    body = {"messages": [_message_json(m) for m in call.messages], **_tools_json(call)}
    if call.template_kwargs:
        body["chat_template_kwargs"] = dict(call.template_kwargs)
    return body


def sampling_json(s: ResolvedSampling) -> dict[str, object]:
    out: dict[str, object] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repeat_penalty": s.repetition_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "repeat_last_n": s.repeat_last_n,
    }
    if s.seed is not None:
        out["seed"] = s.seed
    dry = {
        "dry_multiplier": s.dry.multiplier,
        "dry_base": s.dry.base,
        "dry_allowed_length": s.dry.allowed_length,
        "dry_penalty_last_n": s.dry.penalty_last_n,
        "dry_sequence_breakers": list(s.dry.sequence_breakers) or None,
    }
    out.update({k: v for k, v in dry.items() if v is not None})
    if s.logit_bias:
        out["logit_bias"] = [[token, bias] for token, bias in s.logit_bias]
    if s.top_logprobs is not None:
        # top_logprobs 0 asks llama-server for no probabilities at all: ask
        # for one alternative and drop it when decoding.
        out.update(logprobs=True, top_logprobs=max(1, s.top_logprobs))
    return out


def _tools_json(call: ChatCall) -> dict[str, object]:
    if not call.tools:
        return {}
    out: dict[str, object] = {
        "tools": [_tool_json(t) for t in call.tools],
        "tool_choice": _TOOL_CHOICE[call.tool_choice],
    }
    if call.parallel_tool_calls is not None:
        out["parallel_tool_calls"] = call.parallel_tool_calls
    return out


def _tool_json(tool: Tool) -> dict[str, object]:
    parameters = json.loads(tool.parameters) if tool.parameters else {"type": "object", "properties": {}}
    function = {"name": tool.name, "parameters": parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _format_json(call: ChatCall) -> dict[str, object]:
    fmt = call.response_format
    if fmt.kind is FormatKind.JSON_SCHEMA:
        return {"response_format": {"type": "json_schema", "json_schema": {"schema": json.loads(fmt.text)}}}
    if fmt.kind is FormatKind.JSON_OBJECT:
        return {"response_format": {"type": "json_object"}}
    if fmt.kind is FormatKind.GRAMMAR:
        return {"grammar": fmt.text}
    return {}


def _message_json(message: CallMessage) -> dict[str, object]:
    out: dict[str, object] = {"role": _ROLE[message.role], "content": _content_json(message)}
    if message.reasoning:
        out["reasoning_content"] = message.reasoning
    if message.tool_calls:
        out["tool_calls"] = [_call_json(c) for c in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def _content_json(message: CallMessage) -> str | list[dict[str, object]]:
    if not any(isinstance(p, Image) for p in message.parts):
        return "".join(p.text for p in message.parts if isinstance(p, TextPart))
    return [_part_json(p) for p in message.parts]


def _part_json(part: TextPart | Image) -> dict[str, object]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    url = f"data:{part.mime};base64,{base64.b64encode(part.data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def _call_json(call: ToolCall) -> dict[str, object]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments or "{}"}}


# --- one chunk of the stream ---------------------------------------------


def chunk_from_json(payload: Mapping[str, object], *, alternatives: int | None = None) -> ChatChunk:
    """One ``chat.completion.chunk``. ``alternatives``: how many top
    alternatives per token the request asked for (None: no logprobs)."""
    choices = payload.get("choices")
    choice = json_dict(choices[0]) if isinstance(choices, list) and choices else {}
    delta = json_dict(choice.get("delta"))
    return ChatChunk(
        reasoning=json_str(delta.get("reasoning_content")),
        content=json_str(delta.get("content")),
        finish_reason=finish_reason(choice.get("finish_reason")),
        usage=_usage(payload.get("usage")),
        timings=timings_json(payload.get("timings")),
        progress=_progress(payload.get("prompt_progress")),
        tool_calls=tuple(_fragment(json_dict(raw)) for raw in _list(delta.get("tool_calls"))),
        logprobs=_logprobs(choice.get("logprobs"), alternatives) if alternatives is not None else (),
    )


def finish_reason(raw: object) -> FinishReason | None:
    """llama-server's string; None while generating; an unknown reason is a STOP."""
    if not isinstance(raw, str) or not raw:
        return None
    return _FINISH.get(raw, FinishReason.STOP)


def _fragment(raw: dict[str, object]) -> ToolCallDelta:
    function = json_dict(raw.get("function"))
    return ToolCallDelta(
        index=_count(raw.get("index")),
        id=json_str(raw.get("id")),
        name=json_str(function.get("name")),
        arguments=json_str(function.get("arguments")),
    )


def _logprobs(raw: object, alternatives: int) -> tuple[TokenLogprob, ...]:
    tokens = []
    for entry in map(json_dict, _list(json_dict(raw).get("content"))):
        top = tuple(
            TokenAlternative(json_str(alt.get("token")), _float(alt.get("logprob")), _bytes(alt.get("bytes")))
            for alt in map(json_dict, _list(entry.get("top_logprobs")))
        )
        tokens.append(TokenLogprob(json_str(entry.get("token")), _float(entry.get("logprob")),
                                   _bytes(entry.get("bytes")), top[:alternatives]))
    return tuple(tokens)


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(
        prompt_tokens=_count(raw.get("prompt_tokens")),
        completion_tokens=_count(raw.get("completion_tokens")),
        total_tokens=_count(raw.get("total_tokens")),
        cached_prompt_tokens=_count(json_dict(raw.get("prompt_tokens_details")).get("cached_tokens")),
    )


def _progress(raw: object) -> PromptStep | None:
    """``prompt_progress``: tokens in the slot so far, ms since the prompt began."""
    if not isinstance(raw, dict):
        return None
    return PromptStep(processed=_count(raw.get("processed")), elapsed_ms=_float(raw.get("time_ms")))


def timings_json(raw: object) -> Timings | None:
    if not isinstance(raw, dict):
        return None
    return Timings(
        prompt_n=_count(raw.get("prompt_n")),
        prompt_ms=_float(raw.get("prompt_ms")),
        prompt_per_second=_float(raw.get("prompt_per_second")),
        predicted_n=_count(raw.get("predicted_n")),
        predicted_ms=_float(raw.get("predicted_ms")),
        predicted_per_second=_float(raw.get("predicted_per_second")),
        cache_n=_count(raw.get("cache_n")),
        draft_n=_count(raw.get("draft_n")),
        draft_accepted_n=_count(raw.get("draft_n_accepted")),
    )


# --- values of any type, read as one type ---------------------------------


def json_dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def json_str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _bytes(value: object) -> bytes:
    """A JSON list of byte values; anything else (or out of range) is empty."""
    if not isinstance(value, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return b""
    return bytes(value)


def json_int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def _count(value: object) -> int:
    """A token count or an index: never negative, and within what the API's uint32 fields carry."""
    return min(max(json_int(value), 0), 0xFFFFFFFF)


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    try:
        result = float(value)  # an int beyond a double's range overflows
    except OverflowError:
        return 0.0
    return result if math.isfinite(result) else 0.0
