"""Server reflection under both names clients use: v1 and v1alpha.

grpcio-reflection implements only ``grpc.reflection.v1alpha``; current
grpcurl, Postman and grpc-go ask for ``grpc.reflection.v1`` first. The two
protocols are the same messages under another package (the v1 proto was
published as a copy of v1alpha), so one servicer answers both: the v1 route
reuses v1alpha's (de)serializers, and a v1 file descriptor is registered so
clients that describe the reflection service itself find it.

grpcio's servicer finds no method by its full name (grpc/grpc#34743), which
is how ``grpcurl describe llamagate.v1.LlamaGateService.Generate`` asks: a
method is answered with its service's file.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1ALPHA, _V1 = "grpc.reflection.v1alpha", "grpc.reflection.v1"


def add_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    _register_v1_descriptor()
    names = (*service_names, V1_SERVICE, V1ALPHA_SERVICE)
    servicer = _Reflection(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": v1}),))


class _Reflection(reflection.aio.ReflectionServicer):
    # grpcio-reflection's own (unstubbed) lookup, widened; tests/test_grpc_edge.py notices if it is renamed.
    def _file_containing_symbol(self, request, fully_qualified_name):
        try:
            method = descriptor_pool.Default().FindMethodByName(fully_qualified_name)
        except KeyError:  # not a method: a service, message or enum, as grpcio finds it
            return super()._file_containing_symbol(request, fully_qualified_name)  # type: ignore[misc]
        return super()._file_containing_symbol(request, method.containing_service.full_name)  # type: ignore[misc]


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1_SERVICE)
        return  # a second server in the same process
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", _V1
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # message fields only: setting it on a string field breaks it
                field.type_name = _v1(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = _v1(method.input_type), _v1(method.output_type)
    pool.Add(proto)


def _v1(type_name: str) -> str:
    return type_name.replace(f".{_V1ALPHA}.", f".{_V1}.")
