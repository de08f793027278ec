"""llama-server's HTTP API: streamed chat completions and /props (SPEC §12)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from llamagate.domain.chat import ChatChunk, Timings, Usage
from llamagate.domain.errors import EngineFailed, EngineRejected
from llamagate.domain.ports import Endpoint

# Prompt processing can take long before the first byte; reads between
# tokens are short. Cancellation works throughout: it closes the stream.
FIRST_BYTE_TIMEOUT = 120.0


class LlamaHttpClient:
    def __init__(self, read_timeout: float = FIRST_BYTE_TIMEOUT) -> None:
        self._timeout = httpx.Timeout(10.0, read=read_timeout)

    async def stream_chat(self, endpoint: Endpoint, body: dict[str, object]) -> AsyncIterator[ChatChunk]:
        try:
            async with _client(endpoint, self._timeout) as client:
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        raise _rejection(response.status_code, await response.aread())
                    async for line in response.aiter_lines():
                        payload = parse_sse_line(line)
                        if payload is DONE:
                            return
                        if isinstance(payload, dict) and "error" in payload:
                            raise _rejection(500, json.dumps(payload).encode())
                        if payload is not None:
                            yield chunk_from_json(payload)
        except httpx.TransportError as error:
            raise EngineFailed(f"lost connection to llama-server: {error!r}") from error

    async def props(self, endpoint: Endpoint) -> dict[str, object]:
        try:
            async with _client(endpoint, httpx.Timeout(10.0)) as client:
                response = await client.get("/props")
                props = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            props = {}
        return props if isinstance(props, dict) else {}


def _client(endpoint: Endpoint, timeout: httpx.Timeout) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    return httpx.AsyncClient(base_url=endpoint.base_url, timeout=timeout, headers=headers)


DONE = object()


def parse_sse_line(line: str) -> dict | object | None:
    """``data: {...}`` → the JSON object; ``data: [DONE]`` → DONE; else None
    (comments, blank keep-alives and malformed lines are skipped)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def chunk_from_json(payload: dict) -> ChatChunk:
    choices = payload.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    delta = choice.get("delta") or {}
    return ChatChunk(
        reasoning=delta.get("reasoning_content") or "",
        content=delta.get("content") or "",
        finish_reason=choice.get("finish_reason"),
        usage=_usage(payload.get("usage")),
        timings=_timings(payload.get("timings")),
    )


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens", 0)),
        completion_tokens=int(raw.get("completion_tokens", 0)),
        total_tokens=int(raw.get("total_tokens", 0)),
    )


def _timings(raw: object) -> Timings | None:
    if not isinstance(raw, dict):
        return None
    return Timings(
        prompt_n=int(raw.get("prompt_n", 0)),
        prompt_ms=float(raw.get("prompt_ms", 0.0)),
        prompt_per_second=float(raw.get("prompt_per_second", 0.0)),
        predicted_n=int(raw.get("predicted_n", 0)),
        predicted_ms=float(raw.get("predicted_ms", 0.0)),
        predicted_per_second=float(raw.get("predicted_per_second", 0.0)),
        cache_n=int(raw.get("cache_n", 0)),
    )


def _rejection(status: int, body: bytes) -> Exception:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace")[:500]
    if 400 <= status < 500:
        return EngineRejected(f"llama-server rejected the request: {message}")
    return EngineFailed(f"llama-server answered {status}: {message}")
