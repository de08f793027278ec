"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from llamagate.domain import errors

STATUS_FOR: dict[type[errors.LlamagateError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidModel: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.NoModelLoaded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.EngineNotFound: grpc.StatusCode.FAILED_PRECONDITION,
    errors.EngineRejected: grpc.StatusCode.INVALID_ARGUMENT,
    errors.EngineFailed: grpc.StatusCode.UNAVAILABLE,
    errors.ContextExceeded: grpc.StatusCode.OUT_OF_RANGE,  # fixable by state: a larger context or a shorter chat
    errors.Superseded: grpc.StatusCode.CANCELLED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Aborted: grpc.StatusCode.ABORTED,  # the service ended it (unload, replacement): retry
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def status_for(error: errors.LlamagateError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL
