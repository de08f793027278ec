"""The one table from domain errors to gRPC status codes, and the details a client can act on."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from llamagate.domain import errors

STATUS_FOR: dict[type[errors.LlamagateError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidModel: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.NoModelLoaded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotReady: grpc.StatusCode.UNAVAILABLE,  # loading or restarting: retry
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,  # the queue is full: retry later or elsewhere
    errors.EngineNotFound: grpc.StatusCode.FAILED_PRECONDITION,
    errors.EngineRejected: grpc.StatusCode.INVALID_ARGUMENT,
    errors.EngineFailed: grpc.StatusCode.UNAVAILABLE,
    errors.ContextExceeded: grpc.StatusCode.OUT_OF_RANGE,  # fixable by state: a larger context or a shorter chat
    errors.Superseded: grpc.StatusCode.CANCELLED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Aborted: grpc.StatusCode.ABORTED,  # the service ended it (unload, replacement): retry
    errors.Internal: grpc.StatusCode.INTERNAL,
}

_DETAILS_KEY = "grpc-status-details-bin"  # where google.rpc.Status travels (grpcio-status reads it)


def status_for(error: errors.LlamagateError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL


def trailing_details(error: errors.LlamagateError) -> tuple[tuple[str, bytes], ...]:
    """The ``google.rpc.Status`` with the details a client can act on (a
    RetryInfo when retrying later can succeed); empty when there are none."""
    if error.retry_after_s is None:
        return ()
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(max(0, round(error.retry_after_s * 1000)))
    detail = error_details_pb2.RetryInfo(retry_delay=delay)
    code = status_for(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(error))
    status.details.add().Pack(detail)
    return ((_DETAILS_KEY, status.SerializeToString()),)
