"""Protobuf chat messages <-> the domain's chat types. No logic beyond the mapping."""

from __future__ import annotations

from dataclasses import asdict

from llamagate.domain import chat
from llamagate.domain.errors import InvalidArgument
from llamagate.server.convert import enum_value
from llamagate.v1 import llamagate_pb2 as pb

_ROLE = {
    pb.ROLE_SYSTEM: chat.Role.SYSTEM,
    pb.ROLE_USER: chat.Role.USER,
    pb.ROLE_ASSISTANT: chat.Role.ASSISTANT,
    pb.ROLE_TOOL: chat.Role.TOOL,
}
_EFFORT = {pb.REASONING_EFFORT_LOW: "low", pb.REASONING_EFFORT_MEDIUM: "medium", pb.REASONING_EFFORT_HIGH: "high"}
_TOOL_MODE = {
    pb.TOOL_CHOICE_MODE_UNSPECIFIED: chat.ToolChoiceMode.AUTO,
    pb.TOOL_CHOICE_MODE_AUTO: chat.ToolChoiceMode.AUTO,
    pb.TOOL_CHOICE_MODE_NONE: chat.ToolChoiceMode.NONE,
    pb.TOOL_CHOICE_MODE_REQUIRED: chat.ToolChoiceMode.REQUIRED,
}
FINISH_TO_PB = {
    chat.FinishReason.STOP: pb.FINISH_REASON_STOP,
    chat.FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    chat.FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
    chat.FinishReason.CONTEXT_LIMIT: pb.FINISH_REASON_CONTEXT_LIMIT,
}


def generate_request(request: pb.GenerateRequest) -> chat.GenerateRequest:
    return chat.GenerateRequest(
        messages=messages(request.messages),
        sampling=sampling(request.sampling),
        reasoning=_reasoning(request.reasoning),
        tools=tools(request.tools),
        tool_choice=_tool_choice(request.tool_choice),
        parallel_tool_calls=request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None,
        response_format=_response_format(request.response_format),
        server_tools=_server_tools(request.server_tools) if request.HasField("server_tools") else None,
    )


def _server_tools(t: pb.ServerTools) -> chat.ServerTools:
    return chat.ServerTools(
        names=tuple(t.names),
        max_iterations=t.max_iterations if t.HasField("max_iterations") else None,
        tool_timeout_s=t.tool_timeout_s if t.HasField("tool_timeout_s") else None,
        tool_turn_grammar=t.tool_turn_grammar,
    )


def count_request(request: pb.CountTokensRequest) -> chat.GenerateRequest:
    return chat.GenerateRequest(
        messages=messages(request.messages), reasoning=_reasoning(request.reasoning), tools=tools(request.tools)
    )


def messages(raw) -> tuple[chat.ChatMessage, ...]:
    return tuple(_message(m, f"messages[{i}]") for i, m in enumerate(raw))


def _message(m: pb.Message, where: str) -> chat.ChatMessage:
    parts: list[chat.Part] = [chat.TextPart(m.text)] if m.text else []
    parts += [_part(p) for p in m.parts]
    return chat.ChatMessage(
        role=enum_value(_ROLE, m.role, f"{where}.role"),
        parts=tuple(parts),
        reasoning=m.reasoning,
        tool_calls=tuple(chat.ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls),
        tool_call_id=m.tool_call_id,
    )


def _part(p: pb.ContentPart) -> chat.Part:
    if p.WhichOneof("part") == "image":
        return chat.ImagePart(p.image.data, p.image.mime_type)
    return chat.TextPart(p.text)


def tools(raw) -> tuple[chat.Tool, ...]:
    return tuple(chat.Tool(t.name, t.description, t.parameters) for t in raw)


def _tool_choice(c: pb.ToolChoice) -> chat.ToolChoice:
    if c.WhichOneof("choice") == "name":
        if not c.name:
            raise InvalidArgument("is empty: name one of the request's tools, or set mode", field="tool_choice.name")
        return chat.ToolChoice(chat.ToolChoiceMode.REQUIRED, c.name)
    return chat.ToolChoice(enum_value(_TOOL_MODE, c.mode, "tool_choice.mode"))


def _response_format(f: pb.ResponseFormat) -> chat.ResponseFormat:
    kind = f.WhichOneof("format")
    if kind == "json_schema":
        return chat.ResponseFormat(chat.FormatKind.JSON_SCHEMA, f.json_schema)
    if kind == "json_object" and f.json_object:
        return chat.ResponseFormat(chat.FormatKind.JSON_OBJECT)
    if kind == "grammar":
        return chat.ResponseFormat(chat.FormatKind.GRAMMAR, f.grammar)
    return chat.ResponseFormat()


def sampling(s: pb.Sampling) -> chat.Sampling:
    def opt(message, name: str):
        return getattr(message, name) if message.HasField(name) else None

    return chat.Sampling(
        temperature=opt(s, "temperature"),
        top_p=opt(s, "top_p"),
        top_k=opt(s, "top_k"),
        min_p=opt(s, "min_p"),
        repetition_penalty=opt(s, "repetition_penalty"),
        presence_penalty=opt(s, "presence_penalty"),
        max_tokens=opt(s, "max_tokens"),
        stop=tuple(s.stop),
        seed=opt(s, "seed"),
        frequency_penalty=opt(s, "frequency_penalty"),
        repeat_last_n=opt(s, "repeat_last_n"),
        dry=chat.Dry(
            multiplier=opt(s.dry, "multiplier"),
            base=opt(s.dry, "base"),
            allowed_length=opt(s.dry, "allowed_length"),
            penalty_last_n=opt(s.dry, "penalty_last_n"),
            sequence_breakers=tuple(s.dry.sequence_breakers),
        ),
        logit_bias=tuple((b.token, b.bias) for b in s.logit_bias),
        top_logprobs=opt(s, "top_logprobs"),
    )


def _reasoning(r: pb.ReasoningControls) -> chat.ReasoningControls:
    return chat.ReasoningControls(
        enable_thinking=r.enable_thinking if r.HasField("enable_thinking") else None,
        reasoning_effort=None if r.reasoning_effort == pb.REASONING_EFFORT_UNSPECIFIED
        else enum_value(_EFFORT, r.reasoning_effort, "reasoning.reasoning_effort"),
        preserve_thinking=r.preserve_thinking if r.HasField("preserve_thinking") else None,
    )


def generate_event(event: chat.GenerateEvent, request_id: str) -> pb.GenerateResponse:
    if isinstance(event, chat.ReasoningDelta):
        return pb.GenerateResponse(reasoning_delta=event.text, request_id=request_id, logprobs=_logprobs(event))
    if isinstance(event, chat.ContentDelta):
        return pb.GenerateResponse(content_delta=event.text, request_id=request_id, logprobs=_logprobs(event))
    if isinstance(event, chat.ToolCallDelta):
        delta = pb.ToolCallDelta(index=event.index, id=event.id, name=event.name, arguments_delta=event.arguments)
        return pb.GenerateResponse(tool_call_delta=delta, request_id=request_id)
    if isinstance(event, chat.ToolStarted):
        started = pb.ToolStarted(id=event.id, name=event.name, arguments=event.arguments, status=event.status)
        return pb.GenerateResponse(tool_started=started, request_id=request_id)
    if isinstance(event, chat.ToolFinished):
        finished = pb.ToolFinished(id=event.id, name=event.name, result=event.result, failed=event.failed)
        return pb.GenerateResponse(tool_finished=finished, request_id=request_id)
    done = pb.GenerateDone(
        finish_reason=FINISH_TO_PB[event.finish_reason],
        usage=pb.Usage(**asdict(event.usage)),  # same field names on both sides
        timings=pb.Timings(**asdict(event.timings)),
    )
    return pb.GenerateResponse(done=done, request_id=request_id)


def _logprobs(event: chat.ReasoningDelta | chat.ContentDelta) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token=t.token,
            logprob=t.logprob,
            bytes=t.data,
            top_logprobs=[pb.TokenAlternative(token=a.token, logprob=a.logprob, bytes=a.data) for a in t.top],
        )
        for t in event.logprobs
    ]
