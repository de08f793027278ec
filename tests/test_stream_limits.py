"""Streams open at once, in total and per client (server/stream_limits.py), through a real gRPC server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from e2e import error_details

from llamagate.server.stream_limits import StreamLimits, StreamLimitSettings, peer_host

METHOD = "/test.Streams/Hold"


class Held:
    """A streaming method that sends one message, then waits for ``release``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def hold(self, request: bytes, context: grpc.aio.ServicerContext):
        self.started += 1
        yield b"first"
        await self.release.wait()
        yield b"last"


def by_metadata(context: grpc.aio.ServicerContext) -> str:
    """The test's clients say who they are."""
    return dict(context.invocation_metadata() or ()).get("client", peer_host(context))


async def serving(limits: StreamLimits, held: Held, talk):
    server = grpc.aio.server(interceptors=[limits])
    handler = grpc.unary_stream_rpc_method_handler(held.hold)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Streams", {"Hold": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await talk(channel)
    finally:
        await server.stop(None)


def open_stream(channel: grpc.aio.Channel, client: str):
    return channel.unary_stream(METHOD)(b"", metadata=(("client", client),))


def test_a_client_past_its_share_is_refused_at_once_and_others_are_not():
    held = Held()
    limits = StreamLimits(StreamLimitSettings(total=3, per_client=2), identity=by_metadata)

    async def talk(channel):
        a1, a2, b1 = open_stream(channel, "a"), open_stream(channel, "a"), open_stream(channel, "b")
        for call in (a1, a2, b1):
            assert await call.read() == b"first"
        assert limits.open_streams == 3
        with pytest.raises(grpc.aio.AioRpcError) as too_many_for_a:
            await open_stream(channel, "a").read()
        with pytest.raises(grpc.aio.AioRpcError) as too_many_in_all:
            await open_stream(channel, "c").read()
        a1.cancel()
        await asyncio.sleep(0.1)
        c1 = open_stream(channel, "c")  # a place came free
        assert await c1.read() == b"first"
        held.release.set()
        for call in (a2, b1, c1):
            assert await call.read() == b"last"
        await asyncio.sleep(0.05)
        return too_many_for_a.value, too_many_in_all.value

    for_a, in_all = asyncio.run(serving(limits, held, talk))
    assert for_a.code() == in_all.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the most one client may" in for_a.details() and "LLAMAGATE_MAX_STREAMS" in for_a.details()
    assert "its limit" in in_all.details()
    assert held.started == 4  # the refused ones never reached the method
    assert limits.open_streams == 0


def test_refusals_say_when_to_retry():
    held = Held()
    limits = StreamLimits(StreamLimitSettings(total=1, per_client=0), identity=by_metadata)

    async def talk(channel):
        first = open_stream(channel, "a")
        assert await first.read() == b"first"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await open_stream(channel, "b").read()
        held.release.set()
        assert await first.read() == b"last"
        return refused.value

    refused = asyncio.run(serving(limits, held, talk))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_details(refused)["RetryInfo"].retry_delay.ToMilliseconds() == 1000


def test_zero_means_unlimited():
    held = Held()
    limits = StreamLimits(StreamLimitSettings(total=0, per_client=0), identity=by_metadata)

    async def talk(channel):
        calls = [open_stream(channel, "a") for _ in range(20)]
        assert [await c.read() for c in calls] == [b"first"] * 20
        held.release.set()
        return [await c.read() for c in calls]

    assert asyncio.run(serving(limits, held, talk)) == [b"last"] * 20


def test_the_peer_is_counted_by_host_not_by_connection():
    class Peer:
        def __init__(self, peer: str) -> None:
            self._peer = peer

        def peer(self) -> str:
            return self._peer

    assert peer_host(Peer("ipv4:127.0.0.1:50123")) == peer_host(Peer("ipv4:127.0.0.1:50999")) == "ipv4:127.0.0.1"
    assert peer_host(Peer("ipv6:[::1]:50123")) == "ipv6:[::1]"
    assert peer_host(Peer("unix:/run/llamagate.sock")) == "unix:/run/llamagate.sock"


def test_the_limits_come_from_the_environment_and_a_bad_value_names_its_variable():
    from llamagate.server.settings import Settings

    limits = Settings.from_env({"LLAMAGATE_MAX_STREAMS": "10", "LLAMAGATE_MAX_STREAMS_PER_CLIENT": "0",
                                "LLAMAGATE_MAX_PROMPT_BYTES": "1000", "LLAMAGATE_KEEPALIVE_S": "30"}).limits
    assert (limits.total, limits.per_client, limits.prompt_bytes, limits.keepalive_s) == (10, 0, 1000, 30)
    assert ("grpc.keepalive_time_ms", 30_000) in limits.server_options()
    with pytest.raises(ValueError, match="LLAMAGATE_MAX_STREAMS_PER_CLIENT"):
        Settings.from_env({"LLAMAGATE_MAX_STREAMS_PER_CLIENT": "-1"})
