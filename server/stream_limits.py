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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from llamagate.domain.errors import Overloaded
from llamagate.server.errors import status_for, trailing_details

SETTINGS = "LLAMAGATE_MAX_STREAMS / LLAMAGATE_MAX_STREAMS_PER_CLIENT"
_RETRY_S = 1.0

Identity = Callable[[grpc.aio.ServicerContext], str]


def peer_host(context: grpc.aio.ServicerContext) -> str:
    """``ipv4:127.0.0.1:5000`` → ``ipv4:127.0.0.1``; ``unix:/path`` as it is."""
    peer = context.peer() or "unknown"
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer


@dataclass(frozen=True)
class StreamLimitSettings:
    total: int = 256  # LLAMAGATE_MAX_STREAMS: 0 = unlimited
    per_client: int = 64  # LLAMAGATE_MAX_STREAMS_PER_CLIENT: 0 = unlimited


class StreamLimits(grpc.aio.ServerInterceptor):
    """Counts the server-streaming calls open now, in total and per client."""

    def __init__(self, settings: StreamLimitSettings, identity: Identity = peer_host) -> None:
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

    def _counted(self, behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            client = self._identity(context)
            refusal = self._refusal(client)
            if refusal is not None:
                await context.abort(status_for(refusal), str(refusal), trailing_details(refusal))
            with self._holding(client):
                async for response in behaviour(request, context):
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
