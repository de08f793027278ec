"""llama-server's HTTP API: streamed chat completions and /props (SPEC §12, §13).

Owns the wire format both ways: the JSON body built from a ChatCall, the SSE
stream decoded into ChatChunks, llama-server's error frames mapped to the
domain's errors. Decoding is defensive: whatever a field holds (null, the
wrong type), the chunk decodes; only an error frame or a broken stream fails.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator, Mapping
from typing import Final

import httpx

from llamagate.domain.batching import PromptStep
from llamagate.domain.capabilities import ServerCapabilities
from llamagate.domain.chat import (
    CallMessage,
    ChatCall,
    ChatChunk,
    FinishReason,
    Timings,
    Usage,
)
from llamagate.domain.errors import (
    ContextExceeded,
    EngineFailed,
    EngineRejected,
    EngineTimedOut,
    LlamagateError,
)

# Prompt processing can take long before the first byte; cancellation works
# throughout (it closes the stream, and llama-server stops generating).
FIRST_BYTE_TIMEOUT = 120.0
_CONNECT_TIMEOUT = 10.0
_PROPS_TIMEOUT = 10.0
_HEALTH_TIMEOUT = 2.0
# llama-server (cpp-httplib) drops an idle connection after 5 s: let ours go
# first, so a request never goes out on a connection being closed under it.
_KEEPALIVE_EXPIRY = 3.0
# cpp-httplib closes the connection after every streamed response (the
# content provider's last call returns false, which it reads as "cancelled";
# httplib.cpp, write_content_chunked), without a "Connection: close" header.
# A pooled client would send the next request on that dying connection and
# fail with "Server disconnected without sending a response". Saying so
# ourselves keeps such a connection out of the pool: a loopback connect
# costs ~0.1 ms.
_STREAM_HEADERS = {"Connection": "close"}


class LlamaHttpClient:
    """One child's API, over one long-lived connection pool (``aclose()`` it)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        read_timeout: float = FIRST_BYTE_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,  # tests play llama-server's bytes through it
    ) -> None:
        self._read_timeout = read_timeout
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(_CONNECT_TIMEOUT, read=read_timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=_KEEPALIVE_EXPIRY),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream_chat(self, call: ChatCall) -> AsyncIterator[ChatChunk]:
        try:
            async with self._client.stream("POST", "/v1/chat/completions", json=chat_body(call),
                                           headers=_STREAM_HEADERS) as response:
                if response.status_code != 200:
                    raise engine_error(_json_or_text(await response.aread()), status=response.status_code)
                async for line in response.aiter_lines():
                    event = parse_sse_line(line)
                    if event is DONE:
                        return
                    if isinstance(event, dict) and "error" in event:
                        raise engine_error(event, status=None)
                    if isinstance(event, dict):
                        yield chunk_from_json(event)
            raise EngineFailed("llama-server's stream ended early, without [DONE]: the reply is incomplete")
        except httpx.ReadTimeout as error:
            raise EngineTimedOut(f"llama-server sent nothing for {self._read_timeout:g} s") from error
        except httpx.TransportError as error:
            raise EngineFailed(f"lost connection to llama-server: {error!r}") from error

    async def server_capabilities(self) -> ServerCapabilities:
        try:
            response = await self._client.get("/props", timeout=_PROPS_TIMEOUT)
            props = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            props = None
        return capabilities_from_props(props)

    async def responsive(self, timeout: float) -> bool:
        """``/slots`` answers 200 within ``timeout``: its main loop is alive.

        ``/health`` would not do: the HTTP threads answer it alone, so a
        deadlocked main loop still looks healthy. ``/slots`` is served by the
        main loop, also while it decodes (llama-server answers it from its
        worker thread then)."""
        try:
            return (await self._client.get("/slots", timeout=timeout)).status_code == 200
        except httpx.HTTPError:
            return False

    async def healthy(self) -> bool:
        """``/health`` answers 200 (the model is loaded); False while it cannot say."""
        try:
            return (await self._client.get("/health", timeout=_HEALTH_TIMEOUT)).status_code == 200
        except httpx.HTTPError:
            return False  # not listening yet


# --- the request ---------------------------------------------------------


def chat_body(call: ChatCall) -> dict[str, object]:
    """The JSON body for ``/v1/chat/completions`` (streaming, usage included)."""
    s = call.sampling
    body: dict[str, object] = {
        "messages": [_message_json(m) for m in call.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        # A progress chunk after every decode of the prompt: llama-server
        # notices a closed connection only when it has something to write,
        # so without these a cancel waits until the whole prompt is done.
        "return_progress": True,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repeat_penalty": s.repetition_penalty,
        "presence_penalty": s.presence_penalty,
        "max_tokens": call.max_tokens,
    }
    if call.wall_clock_limit_ms > 0:
        body["t_max_predict_ms"] = call.wall_clock_limit_ms
    if call.stop:
        body["stop"] = list(call.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    if call.template_kwargs:
        body["chat_template_kwargs"] = dict(call.template_kwargs)
    return body


def _message_json(message: CallMessage) -> dict[str, object]:
    if not message.images:
        return {"role": message.role.value, "content": message.text}
    parts: list[dict[str, object]] = [{"type": "text", "text": message.text}]
    for image in message.images:
        url = f"data:{image.mime};base64,{base64.b64encode(image.data).decode('ascii')}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": message.role.value, "content": parts}


# --- the stream ----------------------------------------------------------

DONE: Final = object()


def parse_sse_line(line: str) -> dict[str, object] | object | None:
    """``data: {...}`` → the JSON object; ``data: [DONE]`` → DONE; else None
    (comments, keep-alive pings, blank lines and malformed data are skipped)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None
    return payload if isinstance(payload, dict) else None


def chunk_from_json(payload: Mapping[str, object]) -> ChatChunk:
    """One ``chat.completion.chunk``; a null or wrong-typed field counts as absent."""
    choices = payload.get("choices")
    choice = _dict(choices[0]) if isinstance(choices, list) and choices else {}
    delta = _dict(choice.get("delta"))
    return ChatChunk(
        reasoning=_str(delta.get("reasoning_content")),
        content=_str(delta.get("content")),
        finish_reason=finish_reason(choice.get("finish_reason")),
        usage=_usage(payload.get("usage")),
        timings=_timings(payload.get("timings")),
        progress=_progress(payload.get("prompt_progress")),
    )


def finish_reason(raw: object) -> FinishReason | None:
    """llama-server's string; None while generating; an unknown reason is a STOP."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return FinishReason(raw)
    except ValueError:
        return FinishReason.STOP


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(
        prompt_tokens=_int(raw.get("prompt_tokens")),
        completion_tokens=_int(raw.get("completion_tokens")),
        total_tokens=_int(raw.get("total_tokens")),
    )


def _progress(raw: object) -> PromptStep | None:
    """``prompt_progress``: tokens in the slot so far, ms since the prompt began."""
    if not isinstance(raw, dict):
        return None
    return PromptStep(processed=_int(raw.get("processed")), elapsed_ms=_float(raw.get("time_ms")))


def _timings(raw: object) -> Timings | None:
    if not isinstance(raw, dict):
        return None
    return Timings(
        prompt_n=_int(raw.get("prompt_n")),
        prompt_ms=_float(raw.get("prompt_ms")),
        prompt_per_second=_float(raw.get("prompt_per_second")),
        predicted_n=_int(raw.get("predicted_n")),
        predicted_ms=_float(raw.get("predicted_ms")),
        predicted_per_second=_float(raw.get("predicted_per_second")),
        cache_n=_int(raw.get("cache_n")),
    )


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    try:
        result = float(value)  # an int beyond a double's range overflows
    except OverflowError:
        return 0.0
    return result if math.isfinite(result) else 0.0


# --- errors --------------------------------------------------------------


def engine_error(payload: object, *, status: int | None) -> LlamagateError:
    """The domain error for an error llama-server sent: an HTTP error body
    (``status`` set) or an error frame in mid-stream (``status`` None).

    Its ``error.type`` decides (tools/server/server-common.cpp,
    ``format_error_response``); the HTTP status only when there is none.
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    fields = error if isinstance(error, dict) else {}
    message = _str(fields.get("message")) or _str(error) or _str(payload) or _excerpt(payload)
    kind = _str(fields.get("type"))
    if kind == "exceed_context_size_error":
        return _context_exceeded(fields, message)
    if kind in ("invalid_request_error", "not_supported_error", "not_found_error"):
        return EngineRejected(f"llama-server rejected the request: {message}")
    if kind == "unavailable_error":
        return EngineFailed(f"llama-server is unavailable: {message}")
    if kind == "server_error":
        return EngineFailed(f"llama-server failed (server_error): {message}")
    if kind in ("authentication_error", "permission_error"):
        return EngineFailed(f"llama-server refused llamagate's key ({kind}): {message}")
    if status is not None and 400 <= status < 500:
        return EngineRejected(f"llama-server rejected the request ({status}): {message}")
    where = f"answered {status}" if status is not None else "reported an error"
    return EngineFailed(f"llama-server {where}{f' ({kind})' if kind else ''}: {message}")


def _context_exceeded(fields: Mapping[str, object], message: str) -> ContextExceeded:
    needed, holds = _int(fields.get("n_prompt_tokens")), _int(fields.get("n_ctx"))
    advice = "shorten the conversation or load with a larger context_length"
    if needed > 0 and holds > 0:
        text = f"the request needs {needed} tokens; a slot of the loaded model holds {holds}: {advice}"
    else:
        text = f"the request does not fit a slot of the loaded model ({message}): {advice}"
    return ContextExceeded(text, prompt_tokens=needed, context_length=holds)


def _json_or_text(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace")[:500]


def _excerpt(payload: object) -> str:
    try:
        return json.dumps(payload)[:500]
    except (ValueError, TypeError, RecursionError):
        return "no message"


# --- /props --------------------------------------------------------------


def capabilities_from_props(props: object) -> ServerCapabilities:
    """``chat_template_caps`` and ``modalities`` of ``/props``; anything missing
    or not a boolean is None ("llama-server did not say")."""
    root = _dict(props)
    template_caps, modalities = _dict(root.get("chat_template_caps")), _dict(root.get("modalities"))
    return ServerCapabilities(
        tools=_bool(template_caps.get("supports_tools")),
        preserve_thinking=_bool(template_caps.get("supports_preserve_reasoning")),
        vision=_bool(modalities.get("vision")),
    )


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None
