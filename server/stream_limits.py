"""How many streams the service and each client may hold open at once (issue 13).

A stream (Generate, LoadModel) holds a connection, a queue place and often a
decoding slot for seconds or minutes; one client opening hundreds would
starve the others. Past either bound a new stream is refused at once with
RESOURCE_EXHAUSTED and a RetryInfo, naming the setting; nothing is queued.
The client is the authenticated caller's name when auth is on, else the
peer's address (without its port: one host's connections count together).
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from llamagate.domain.errors import Overloaded
from llamagate.server.auth import client_name
from llamagate.server.errors import status_for, trailing_details

SETTINGS = "LLAMAGATE_MAX_STREAMS / LLAMAGATE_MAX_STREAMS_PER_CLIENT"
PROMPT_SETTING = "LLAMAGATE_MAX_PROMPT_BYTES"
_RETRY_S = 1.0

Identity = Callable[[grpc.aio.ServicerContext], str]


def peer_host(context: grpc.aio.ServicerContext) -> str:
    """``ipv4:127.0.0.1:5000`` → ``ipv4:127.0.0.1``; ``unix:/path`` as it is."""
    peer = context.peer() or "unknown"
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer


def caller(context: grpc.aio.ServicerContext) -> str:
    """The authenticated caller's name when auth is on, else its host."""
    return client_name() or peer_host(context)


@dataclass(frozen=True)
class StreamLimitSettings:
    total: int = 256  # LLAMAGATE_MAX_STREAMS: 0 = unlimited
    per_client: int = 64  # LLAMAGATE_MAX_STREAMS_PER_CLIENT: 0 = unlimited
    prompt_bytes: int = 8 << 20  # LLAMAGATE_MAX_PROMPT_BYTES: a conversation's text; 0 = unlimited
    # Pings keep a long generation's connection alive through idle-killing
    # middleboxes; clients may ping every 10 s, even with no call open.
    keepalive_s: int = 60  # LLAMAGATE_KEEPALIVE_S

    def server_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.keepalive_s * 1000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]



class StreamLimits(grpc.aio.ServerInterceptor):
    """Counts the server-streaming calls open now, in total and per client."""

    def __init__(self, settings: StreamLimitSettings, identity: Identity = caller) -> None:
        self._settings = settings
        self._identity = identity
        self._open: Counter[str] = Counter()
        self._total = 0

    @property
    def open_streams(self) -> int:
        return self._total

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        stream = handler.unary_stream if handler is not None else None
        if handler is None or stream is None or not inspect.isasyncgenfunction(stream):
            return handler  # unary calls, and streams that write to the context (health's Watch)
        return grpc.unary_stream_rpc_method_handler(
            self._counted(stream), handler.request_deserializer, handler.response_serializer)

    def _counted(self, behaviour: Callable[..., AsyncGenerator[Any, None]]) -> Callable[..., AsyncIterator[Any]]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            client = self._identity(context)
            refusal = self._refusal(client)
            if refusal is not None:
                await context.abort(status_for(refusal), str(refusal), trailing_details(refusal))
            with self._holding(client):
                async with contextlib.aclosing(behaviour(request, context)) as responses:
                    async for response in responses:
                        yield response
        return run

    def _refusal(self, client: str) -> Overloaded | None:
        total, per_client = self._settings.total, self._settings.per_client
        if per_client and self._open[client] >= per_client:  # first: the caller can act on its own share
            return Overloaded(f"this client holds {self._open[client]} streams, the most one client may; close one"
                              f" or retry shortly ({SETTINGS})", retry_after_s=_RETRY_S)
        if total and self._total >= total:
            return Overloaded(f"the service holds {self._total} streams, its limit; retry shortly or raise "
                              f"{SETTINGS}", retry_after_s=_RETRY_S)
        return None

    @contextlib.contextmanager
    def _holding(self, client: str) -> Iterator[None]:
        self._total += 1
        self._open[client] += 1
        try:
            yield
        finally:
            self._total -= 1
            self._open[client] -= 1
            if not self._open[client]:
                del self._open[client]
