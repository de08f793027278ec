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
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.NotCached: grpc.StatusCode.FAILED_PRECONDITION,  # offline: fixable by going online or fetching it
    errors.SourceUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.InsufficientResources: grpc.StatusCode.RESOURCE_EXHAUSTED,  # disk or memory: the numbers are in ErrorInfo
    errors.NoModelLoaded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotReady: grpc.StatusCode.UNAVAILABLE,  # loading or restarting: retry
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,  # the queue is full: retry later or elsewhere
    errors.EngineNotFound: grpc.StatusCode.FAILED_PRECONDITION,
    errors.EngineRejected: grpc.StatusCode.INVALID_ARGUMENT,
    errors.EngineFailed: grpc.StatusCode.UNAVAILABLE,
    errors.ContextExceeded: grpc.StatusCode.OUT_OF_RANGE,  # fixable by state: a larger context or a shorter chat
    errors.ReplyUnparsable: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.RequestTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,  # the model's markup broke the parser's limits
    errors.Superseded: grpc.StatusCode.CANCELLED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Aborted: grpc.StatusCode.ABORTED,  # the service ended it (unload, replacement): retry
    errors.Internal: grpc.StatusCode.INTERNAL,
    errors.WrongMode: grpc.StatusCode.FAILED_PRECONDITION,  # the model serves another kind of request
    errors.NotSpeechModel: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DecoderUnavailable: grpc.StatusCode.FAILED_PRECONDITION,  # fetch the file or install the extra
    errors.WorkerUnavailable: grpc.StatusCode.UNAVAILABLE,  # an RPC worker down or busy: retry
    errors.WorkerUnusable: grpc.StatusCode.FAILED_PRECONDITION,  # another of our models holds it, or another protocol
}

_DETAILS_KEY = "grpc-status-details-bin"  # where google.rpc.Status travels (grpcio-status reads it)


def status_for(error: errors.LlamagateError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL


ERROR_DOMAIN = "llamagate.dev"


def trailing_details(error: errors.LlamagateError) -> tuple[tuple[str, bytes], ...]:
    """The ``google.rpc.Status`` with the details a client can act on: an
    ErrorInfo with the error's stable reason always, a BadRequest naming the
    field of a bad request, a RetryInfo when retrying later can succeed."""
    code = status_for(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(error))
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    status.details.add().Pack(info)
    if isinstance(error, errors.InvalidArgument) and error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.description)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(0, round(error.retry_after_s * 1000)))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return ((_DETAILS_KEY, status.SerializeToString()),)
