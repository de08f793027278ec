"""llama-server's HTTP API: streamed chat completions, token counts, embeddings,
rerank scores, /props (SPEC §12, §13).

The SSE stream is decoded into ChatChunks (the chat JSON itself is
``llama_chat_wire``'s), llama-server's error frames mapped to the domain's
errors. Only an error frame or a broken stream fails a stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Final

import httpx

from llamagate.adapters.llama_chat_wire import chat_body, chunk_from_json, json_dict, json_int, json_str, template_body
from llamagate.adapters.llama_completion_wire import (
    COMPLETION_PATH,
    DETOKENIZE_PATH,
    TOKENIZE_PATH,
    completion_body,
    detokenize_body,
    text_from_json,
    token_chunk,
    tokenize_body,
    tokens_from_json,
)
from llamagate.adapters.llama_embed_wire import (
    EMBEDDINGS_PATH,
    RERANK_PATH,
    chunks,
    embed_body,
    embedding_error,
    embeddings_from_json,
    merge_embeddings,
    merge_rankings,
    ranking_from_json,
    rerank_body,
)
from llamagate.domain.capabilities import ServerCapabilities
from llamagate.domain.chat import ChatCall, ChatChunk
from llamagate.domain.embeddings import Embeddings, EmbedRequest, Ranking, RerankRequest
from llamagate.domain.errors import (
    ContextExceeded,
    EngineFailed,
    EngineRejected,
    EngineTimedOut,
    LlamagateError,
)
from llamagate.domain.speech import TokenCall, TokenChunk

# Prompt processing can take long before the first byte; cancellation works
# throughout (it closes the stream, and llama-server stops generating).
FIRST_BYTE_TIMEOUT = 120.0
_CONNECT_TIMEOUT = 10.0
_PROPS_TIMEOUT = 10.0
_HEALTH_TIMEOUT = 2.0
_METRICS_TIMEOUT = 2.0  # a scrape waits this long for a busy child, at most
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
                        yield chunk_from_json(event, alternatives=call.sampling.top_logprobs)
            raise EngineFailed("llama-server's stream ended early, without [DONE]: the reply is incomplete")
        except httpx.ReadTimeout as error:
            raise EngineTimedOut(f"llama-server sent nothing for {self._read_timeout:g} s") from error
        except httpx.TransportError as error:
            raise EngineFailed(f"lost connection to llama-server: {error!r}") from error

    async def stream_tokens(self, call: TokenCall) -> AsyncGenerator[TokenChunk, None]:
        try:
            async with self._client.stream("POST", COMPLETION_PATH, json=completion_body(call),
                                           headers=_STREAM_HEADERS) as response:
                if response.status_code != 200:
                    raise engine_error(_json_or_text(await response.aread()), status=response.status_code)
                async for line in response.aiter_lines():
                    event = parse_sse_line(line)
                    if isinstance(event, dict) and "error" in event:
                        raise engine_error(event, status=None)
                    if isinstance(event, dict):
                        chunk, last = token_chunk(event)
                        yield chunk
                        if last:
                            return
            raise EngineFailed("llama-server's stream ended early, before its last chunk: the reply is incomplete")
        except httpx.ReadTimeout as error:
            raise EngineTimedOut(f"llama-server sent nothing for {self._read_timeout:g} s") from error
        except httpx.TransportError as error:
            raise EngineFailed(f"lost connection to llama-server: {error!r}") from error

    async def tokenize(self, text: str) -> list[int]:
        tokens = tokens_from_json(await self._tokenizer(TOKENIZE_PATH, tokenize_body(text)))
        if tokens is None:
            raise EngineFailed("llama-server answered /tokenize without tokens")
        return tokens

    async def detokenize(self, tokens: Sequence[int]) -> str:
        text = text_from_json(await self._tokenizer(DETOKENIZE_PATH, detokenize_body(tokens)))
        if text is None:
            raise EngineFailed("llama-server answered /detokenize without content")
        return text

    async def _tokenizer(self, path: str, body: Mapping[str, object]) -> object:
        """The tokenizer's answer. It answers on the HTTP thread, beside any
        decode; an exception there (an id past the vocabulary) is a 500 of an
        engine that is still up, so the input is what was wrong."""
        try:
            response = await self._client.post(path, json=body, timeout=_PROPS_TIMEOUT)
        except httpx.TimeoutException as error:
            raise EngineTimedOut(f"llama-server's tokenizer did not answer within {_PROPS_TIMEOUT:g} s") from error
        except httpx.TransportError as error:
            raise EngineFailed(f"lost connection to llama-server: {error!r}") from error
        payload = _json_or_text(response.content)
        if response.status_code == 500:
            raise EngineRejected(f"llama-server's tokenizer refused it: {engine_error(payload, status=500)}")
        if response.status_code != 200:
            raise engine_error(payload, status=response.status_code)
        return payload

    async def count_tokens(self, call: ChatCall) -> int:
        """The prompt tokens of ``call`` after the chat template, by
        llama-server's own templating and tokenizer (images included)."""
        try:
            # Tokenizing a long conversation takes a while: the stream's first-byte wait, not /props'.
            response = await self._client.post("/v1/chat/completions/input_tokens", json=template_body(call))
        except httpx.ReadTimeout as error:
            raise EngineTimedOut(f"llama-server did not count the tokens within {self._read_timeout:g} s") from error
        except httpx.TransportError as error:
            raise EngineFailed(f"lost connection to llama-server: {error!r}") from error
        payload = _json_or_text(response.content)
        if response.status_code == 500:  # it answered, so it is up: the conversation is what failed (a bad image)
            raise EngineRejected(f"llama-server could not count this conversation: {engine_error(payload, status=500)}")
        if response.status_code != 200:
            raise engine_error(payload, status=response.status_code)
        count = json_dict(payload).get("input_tokens")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise EngineFailed(f"llama-server answered a token count without input_tokens: {_excerpt(payload)}")
        return count

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """One vector per text, in order; sent in parts (``llama_embed_wire.chunks``)."""
        parts = []
        for part in chunks([len(text) for text in request.texts]):
            texts = request.texts[part.start:part.stop]
            payload = await self._post_json(EMBEDDINGS_PATH, embed_body(texts, normalize=request.normalize),
                                            "compute the embeddings")
            parts.append(embeddings_from_json(payload, len(texts)))
        return merge_embeddings(parts)

    async def rerank(self, request: RerankRequest) -> Ranking:
        """Every document scored against the query, ranked, cut to ``top_n``; sent in parts."""
        parts = []
        for part in chunks([len(request.query) + len(document) for document in request.documents]):
            documents = request.documents[part.start:part.stop]
            payload = await self._post_json(RERANK_PATH, rerank_body(request.query, documents),
                                            "score the documents")
            parts.append((part.start, ranking_from_json(payload, len(documents))))
        return merge_rankings(parts, request)

    async def _post_json(self, path: str, body: Mapping[str, object], what: str) -> object:
        """POST a JSON body and return the answer's JSON. An error answer is
        ``embedding_error``'s when it is one only these endpoints give (a
        500 there is an input too large, not a failed engine), else
        ``engine_error``'s, as for a stream."""
        try:
            # The answer comes after the last input is decoded: the stream's first-byte wait.
            response = await self._client.post(path, json=body)
        except httpx.ReadTimeout as error:
            raise EngineTimedOut(f"llama-server did not {what} within {self._read_timeout:g} s") from error
        except httpx.TransportError as error:
            raise EngineFailed(f"lost connection to llama-server: {error!r}") from error
        payload = _json_or_text(response.content)
        if response.status_code != 200:
            raise embedding_error(payload) or engine_error(payload, status=response.status_code)
        return payload

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

    async def engine_metrics(self) -> str:
        """``/metrics`` (started with ``--metrics``): Prometheus text. llama-server's
        main loop answers it, between decodes too."""
        try:
            response = await self._client.get("/metrics", timeout=_METRICS_TIMEOUT)
        except httpx.TimeoutException as error:
            raise EngineTimedOut(f"llama-server sent no metrics within {_METRICS_TIMEOUT:g} s") from error
        except httpx.TransportError as error:
            raise EngineFailed(f"lost connection to llama-server: {error!r}") from error
        if response.status_code != 200:
            raise engine_error(_json_or_text(response.content), status=response.status_code)
        return response.text

    async def healthy(self) -> bool:
        """``/health`` answers 200 (the model is loaded); False while it cannot say."""
        try:
            return (await self._client.get("/health", timeout=_HEALTH_TIMEOUT)).status_code == 200
        except httpx.HTTPError:
            return False  # not listening yet


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


# --- errors --------------------------------------------------------------


def engine_error(payload: object, *, status: int | None) -> LlamagateError:
    """The domain error for an error llama-server sent: an HTTP error body
    (``status`` set) or an error frame in mid-stream (``status`` None).

    Its ``error.type`` decides (tools/server/server-common.cpp,
    ``format_error_response``); the HTTP status only when there is none.
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    fields = error if isinstance(error, dict) else {}
    message = json_str(fields.get("message")) or json_str(error) or json_str(payload) or _excerpt(payload)
    kind = json_str(fields.get("type"))
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
    needed, holds = json_int(fields.get("n_prompt_tokens")), json_int(fields.get("n_ctx"))
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
    root = json_dict(props)
    template_caps, modalities = json_dict(root.get("chat_template_caps")), json_dict(root.get("modalities"))
    return ServerCapabilities(
        tools=_bool(template_caps.get("supports_tools")),
        preserve_thinking=_bool(template_caps.get("supports_preserve_reasoning")),
        vision=_bool(modalities.get("vision")),
    )


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None
