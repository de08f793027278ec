"""What the server's interceptors share: a handler rebuilt around a wrapped behaviour.

A wrapper of a streaming behaviour reads it inside ``contextlib.aclosing``:
closed at a yield, the wrapper then closes the handler's generator at once,
not whenever the garbage collector gets to it (until then a Generate's
llama-server stream would stay open)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[..., Any]


def rebuilt(handler: grpc.RpcMethodHandler[Any, Any], behaviour_for: Callable[[Behaviour], Behaviour],
            deserializer: Callable[[bytes], Any] | None = None) -> grpc.RpcMethodHandler[Any, Any]:
    """The same kind of handler (unary or streaming, each way) with its behaviour replaced."""
    deserialize = deserializer or handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(behaviour_for(handler.unary_unary), deserialize, serialize)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(behaviour_for(handler.unary_stream), deserialize, serialize)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behaviour_for(handler.stream_unary), deserialize, serialize)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(behaviour_for(handler.stream_stream), deserialize, serialize)
    return handler
