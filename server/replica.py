"""Which replica answered: every response carries ``x-llamagate-replica``.

Behind a balancer a client cannot tell replicas apart by address, yet it needs
to: to count where its calls went, and to name the replica whose stream broke.
So every call carries the replica's id twice:

- in the initial metadata (HTTP/2 headers) of every call that answers with a
  message, sent with the first one: a stream names its replica as it starts,
  the only copy a client gets when the replica dies mid-stream. Generate and
  Synthesize send their ``x-request-id`` at the start; the id joins it there
  (gRPC sends initial metadata once).
- in the trailing metadata of every call, success or error (a call refused
  before any message has no headers of its own: gRPC's trailers-only answer).

Python reads them with ``call.initial_metadata()`` and
``call.trailing_metadata()``, Go with ``stream.Header()`` /
``stream.Trailer()`` (``grpc.Header``/``grpc.Trailer`` call options for unary
calls). What gRPC core refuses before any handler runs (an unknown method, a
listener already closed by a drain, a message over core's cap) carries no id.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from llamagate.server.address import parse_address
from llamagate.server.interception import rebuilt

REPLICA_KEY = "x-llamagate-replica"
SETTING = "LLAMAGATE_REPLICA_ID"
_VALID = re.compile(r"[\x21-\x7e]{1,128}")  # visible ASCII: a valid metadata value and a clean log word

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class ReplicaSettings:
    id: str = ""  # LLAMAGATE_REPLICA_ID; "" = HOSTNAME:PORT (see identity)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReplicaSettings:
        """Raises ValueError naming the variable when it is malformed."""
        given = env.get(SETTING, "").strip()
        if given and not _VALID.fullmatch(given):
            raise ValueError(f"{SETTING} must be 1 to 128 visible ASCII characters (no spaces), got {given!r}")
        return cls(given)

    def identity(self, address: str) -> str:
        """The id this replica answers with, listening on ``address``."""
        return self.id or default_identity(address, socket.gethostname(), os.getpid())


def default_identity(address: str, hostname: str, pid: int) -> str:
    """``HOSTNAME:PORT``: what an operator's balancer or client target list
    names, stable across restarts, and unique per machine (in Kubernetes the
    hostname is the pod's name). ``HOSTNAME-PID`` where no port says which
    process it is: port 0 (picked at bind) and unix sockets."""
    host = "".join(c for c in hostname if "\x21" <= c <= "\x7e")[:100] or "localhost"
    try:
        listening = parse_address(address, listening=True)
    except ValueError:
        listening = None  # said by serve, clearly, before anything listens
    if listening is not None and not listening.is_unix and listening.port:
        return f"{host}:{listening.port}"
    return f"{host}-{pid}"


def with_replica(metadata: Metadata | None, replica: str) -> tuple[tuple[str, str | bytes], ...]:
    """``metadata`` with the replica's id added (once)."""
    given = tuple(metadata or ())
    return given if any(key == REPLICA_KEY for key, _ in given) else (*given, (REPLICA_KEY, replica))


class ReplicaIdentity(grpc.aio.ServerInterceptor):
    """Hands each handler a context that stamps the replica's id on its metadata."""

    def __init__(self, replica: str) -> None:
        self.replica = replica

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        return None if handler is None else rebuilt(handler, self._stamped)

    def _stamped(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        """The same shape of behaviour (gRPC tells async generators from coroutines)."""
        if inspect.isasyncgenfunction(behaviour):
            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                stamped = _Stamped(context, self.replica)
                async with contextlib.aclosing(behaviour(request, stamped)) as responses:
                    async for response in responses:
                        await stamped.send_headers()
                        yield response
            return stream

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            stamped = _Stamped(context, self.replica)
            response = await behaviour(request, stamped)
            if response is not None:  # a unary answer (a streaming coroutine wrote through the context)
                await stamped.send_headers()
            return response
        return call


class _Stamped:
    """A handler's context whose metadata, both ways, carries the replica's id.
    The trailing id is set at once, so an error raised anywhere (an abort
    without metadata of its own, an unexpected exception) carries it too."""

    def __init__(self, context: grpc.aio.ServicerContext, replica: str) -> None:
        self._context = context
        self._replica = replica
        self._headers_sent = False
        self._trailing: Metadata = ()
        context.set_trailing_metadata(((REPLICA_KEY, replica),))

    async def send_initial_metadata(self, metadata: Metadata) -> None:
        self._headers_sent = True
        await self._context.send_initial_metadata(with_replica(metadata, self._replica))

    async def send_headers(self) -> None:
        """The initial metadata with the id, unless the handler sent its own already."""
        if not self._headers_sent:
            await self.send_initial_metadata(())

    async def write(self, message: Any) -> None:
        await self.send_headers()
        await self._context.write(message)

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self._trailing = tuple(metadata)
        self._context.set_trailing_metadata(with_replica(metadata, self._replica))

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()) -> None:
        """As gRPC's: an abort with no metadata of its own sends what was set before."""
        given = trailing_metadata or self._trailing
        await self._context.abort(code, details, with_replica(given, self._replica))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)
