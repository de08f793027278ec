"""gRPC's health service, with Watch streams that end at shutdown.

A Watch never ends by itself, and gRPC's graceful stop waits for every call in
flight: one Watch left open (a balancer's, or a client's own health checking)
would keep a stopping service alive, not listening, for the whole grace
period. Here each Watch sends its last status (NOT_SERVING) and ends with OK
as the shutdown begins, and only real work holds the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from grpc_health.v1 import health, health_pb2

_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class DrainingHealth(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._stopping = asyncio.Event()
        self._known: set[str] = {""}

    async def set(self, service: str, status: Any) -> None:
        if not self._stopping.is_set():  # gRPC's set is ignored then, too
            self._known.add(service)
        await super().set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()  # every name NOT_SERVING, for good
        self._stopping.set()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        writes = _Writes(context)
        watching = asyncio.ensure_future(super().Watch(request, writes))  # type: ignore[arg-type]  # a stand-in
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({watching, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the caller went away
            stopping.cancel()
            if not watching.done():
                watching.cancel()
        if not self._stopping.is_set():
            await watching  # its error (the caller went away), as gRPC's Watch would end
            return
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        final = _NOT_SERVING if request.service in self._known else _UNKNOWN
        if await writes.settled() != final:
            await context.write(health_pb2.HealthCheckResponse(status=final))


class _Writes:
    """The context a Watch writes through. Each write is shielded from the
    Watch's cancellation (a write cut off midway would leave the call unable to
    write its last status); ``settled`` waits for the one under way."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._pending: asyncio.Future[None] | None = None
        self._status: Any = None

    async def write(self, reply: health_pb2.HealthCheckResponse) -> None:
        self._status = reply.status
        self._pending = asyncio.ensure_future(self._context.write(reply))
        await asyncio.shield(self._pending)

    async def settled(self) -> Any:
        """The last status sent, once sent."""
        if self._pending is not None:
            await self._pending
        return self._status

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)
