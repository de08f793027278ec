"""The largest request the service accepts, refused with a message that names the setting.

gRPC core refuses an oversized message before any handler runs, with a text
("received message larger than max") that cannot say which setting to
change. So core is given twice our limit as its hard cap, and this
interceptor refuses what lies between with RESOURCE_EXHAUSTED naming the
sizes and the setting (issue 7 defect 9).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from llamagate.domain.errors import RequestTooLarge
from llamagate.server.errors import status_for, trailing_details

SETTING = "LLAMAGATE_MAX_MESSAGE_MB (serve --max-message-mb)"
_GRPC_CAP = (1 << 31) - 1


def core_limit(limit: int) -> int:
    """gRPC core's own receive cap for our limit."""
    return min(2 * limit, _GRPC_CAP)


class _TooLarge:
    def __init__(self, size: int) -> None:
        self.size = size


class MessageLimit(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int) -> None:
        self._limit = limit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler  # streaming requests (reflection) keep core's cap
        deserialize = self._checked(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary), deserialize, handler.response_serializer)
        stream: Callable[..., Any] | None = handler.unary_stream
        if stream is None:
            return handler
        # a streaming handler either yields its responses or writes them to the context (health's Watch)
        wrapped = self._streaming(stream) if inspect.isasyncgenfunction(stream) else self._unary(stream)
        return grpc.unary_stream_rpc_method_handler(wrapped, deserialize, handler.response_serializer)

    def _checked(self, deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def check(data: bytes) -> Any:
            return _TooLarge(len(data)) if len(data) > self._limit else deserialize(data)
        return check

    async def _refuse(self, context: grpc.aio.ServicerContext, size: int) -> None:
        error = RequestTooLarge(f"the request is {size:,} bytes, more than this service accepts ({self._limit:,}"
                                f" bytes); send less (e.g. smaller images) or raise {SETTING}")
        await context.abort(status_for(error), str(error), trailing_details(error))

    def _unary(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _TooLarge):
                await self._refuse(context, request.size)
            return await behaviour(request, context)
        return run

    def _streaming(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _TooLarge):
                await self._refuse(context, request.size)
            async with contextlib.aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    yield response
        return run
