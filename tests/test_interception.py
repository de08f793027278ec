"""Every interceptor, closed at a yield (grpc closes a handler's stream that
way), closes the handler's own generator at once: a Generate's llama-server
stream must not wait for the garbage collector."""

from __future__ import annotations

import asyncio
import gc
from collections import namedtuple

import grpc
import pytest
from prometheus_client import CollectorRegistry

from llamagate.server.auth import AuthSettings, BearerAuth
from llamagate.server.message_limit import MessageLimit
from llamagate.server.metrics import RpcMetrics
from llamagate.server.replica import ReplicaIdentity
from llamagate.server.stream_limits import StreamLimits, StreamLimitSettings

TOKEN = "a-token-long-enough-to-be-taken"
Details = namedtuple("Details", "method invocation_metadata")


class Context:
    """What the interceptors read of a grpc.aio servicer context."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    def code(self) -> None:
        return None

    def time_remaining(self) -> None:
        return None

    def set_trailing_metadata(self, metadata) -> None:
        pass

    async def send_initial_metadata(self, metadata) -> None:
        pass

    async def abort(self, code, details="", trailing_metadata=()) -> None:
        raise AssertionError(f"aborted: {code} {details}")


INTERCEPTORS = {
    "replica": lambda: ReplicaIdentity("host:1"),
    "auth": lambda: BearerAuth(AuthSettings.from_env({"LLAMAGATE_AUTH_TOKENS": f"{TOKEN}:admin"})),
    "stream limits": lambda: StreamLimits(StreamLimitSettings()),
    "message limit": lambda: MessageLimit(1 << 20),
    "metrics": lambda: RpcMetrics(CollectorRegistry()),
}


@pytest.mark.parametrize("name", INTERCEPTORS)
def test_closing_the_wrapped_stream_closes_the_handlers_generator_at_once(name):
    closed = []

    async def generate(request, context):
        try:
            for i in range(100):
                yield i
        finally:
            closed.append(True)

    async def main() -> None:
        handler = grpc.unary_stream_rpc_method_handler(generate, request_deserializer=bytes)

        async def continuation(details):
            return handler

        details = Details("/llamagate.v1.LlamaGateService/Generate", (("authorization", f"Bearer {TOKEN}"),))
        wrapped = await INTERCEPTORS[name]().intercept_service(continuation, details)
        stream = wrapped.unary_stream(b"", Context())
        assert await anext(stream) == 0
        gc.disable()  # the proof must not come from a collection
        try:
            await stream.aclose()
            assert closed == [True]
        finally:
            gc.enable()

    asyncio.run(main())
