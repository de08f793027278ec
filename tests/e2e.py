"""What the end-to-end tests share: requests, a direct line to the child, waiting."""

from __future__ import annotations

import time

import grpc
import httpx
import psutil
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from llamagate.v1 import llamagate_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def load(stub, path, **options) -> list[pb.LoadModelResponse]:
    request = pb.LoadModelRequest(path=str(path), options=pb.LoadOptions(**options))
    return list(stub.LoadModel(request, timeout=300))


def ask(text: str, **sampling) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        messages=[pb.Message(role=pb.ROLE_USER, text=text)],
        sampling=pb.Sampling(**sampling),
    )


def llama_server_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "llama-server"]


def engine_url(pid: int) -> str:
    ports = [c.laddr.port for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    return f"http://127.0.0.1:{ports[0]}"


def engine(pid: int) -> httpx.Client:
    """A direct line to the child, with the key only its parent (and its owner) can read."""
    key = psutil.Process(pid).environ()["LLAMA_API_KEY"]
    return httpx.Client(base_url=engine_url(pid), headers={"Authorization": f"Bearer {key}"}, timeout=120)


def error_details(error: grpc.RpcError) -> dict[str, object]:
    """The google.rpc details of a status, by type name ("BadRequest", "ErrorInfo", "RetryInfo")."""
    status = rpc_status.from_call(error)
    found: dict[str, object] = {}
    for detail in status.details if status else ():
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                found[kind.DESCRIPTOR.name] = unpacked = kind()
                detail.Unpack(unpacked)
    return found


def assert_code(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if not isinstance(result, Message):  # a stream: its error comes while reading
            list(result)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def assert_still_serves(stub) -> None:
    events = list(stub.Generate(ask("hi", max_tokens=4), timeout=60))
    assert events[-1].WhichOneof("event") == "done"


def health_of(service) -> health_pb2_grpc.HealthStub:
    return health_pb2_grpc.HealthStub(grpc.insecure_channel(service.address))


def wait_until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
