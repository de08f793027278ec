"""Who may call (issue 13): bearer tokens with roles, on every RPC.

The matrix runs against the real composition (create_server: the real
servicer, health and reflection, every interceptor) with no model loaded: an
error from after the check (NO_MODEL_LOADED, a missing path) shows the call
got through. The RPCs are read from the proto's descriptor, so a new one
cannot go unchecked.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from dataclasses import replace

import grpc
import pytest
from conftest import RunningService
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from llamagate.server import auth, cli
from llamagate.server.app import interceptors
from llamagate.server.auth import ADMIN, INFERENCE, METHOD_ROLES, AuthSettings, BearerAuth, bearer_token
from llamagate.server.settings import Settings
from llamagate.v1 import llamagate_pb2 as pb

ADMIN_TOKEN = "adm-7f3c9e1b5d2a4068"
INFERENCE_TOKEN = "inf-2b8d4f6a0c1e3957"
WRONG_TOKEN = "inf-2b8d4f6a0c1e3958"  # one character off a real one
TOKENS = f"{ADMIN_TOKEN}:admin:ops,{INFERENCE_TOKEN}:inference:chat-app"
SERVICE = pb.DESCRIPTOR.services_by_name["LlamaGateService"]
OK = grpc.StatusCode.OK

# What each RPC answers once past the check, with an empty request and no model loaded.
THROUGH = {
    "LoadModel": grpc.StatusCode.INVALID_ARGUMENT,  # no path
    "UnloadModel": OK,
    "PlanModel": grpc.StatusCode.INVALID_ARGUMENT,  # no path
    "GetStatus": OK,
    "ListModels": OK,
    "Generate": grpc.StatusCode.FAILED_PRECONDITION,  # NO_MODEL_LOADED
    "CountTokens": grpc.StatusCode.FAILED_PRECONDITION,
    "Embed": grpc.StatusCode.FAILED_PRECONDITION,
    "Rerank": grpc.StatusCode.FAILED_PRECONDITION,
    "Synthesize": grpc.StatusCode.FAILED_PRECONDITION,
}


def auth_settings(**env: str) -> AuthSettings:
    return AuthSettings.from_env({"LLAMAGATE_AUTH_TOKENS": TOKENS, **env})


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


# --- the settings ----------------------------------------------------------------------


def test_no_token_configured_means_auth_off_and_the_service_says_so(caplog):
    settings = Settings.from_env({})
    assert not settings.auth.enabled
    with caplog.at_level(logging.INFO, logger="llamagate.server.auth"):
        interceptors(settings)
    assert [r.getMessage() for r in caplog.records if "authentication" in r.getMessage()] == [
        ("authentication off: no tokens configured (LLAMAGATE_AUTH_TOKENS_FILE, LLAMAGATE_AUTH_TOKENS),"
         " so every caller may call every method")]


def test_the_file_and_the_environment_each_add_tokens(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# ops team\n\n  adm-1111111111111111 admin ops \n"
                      "inf-2222222222222222 inference,admin\n   # indented comment\n")
    settings = Settings.from_env({"LLAMAGATE_AUTH_TOKENS_FILE": str(tokens),
                                  "LLAMAGATE_AUTH_TOKENS": " inf-3333333333333333:inference:web , "
                                                           "adm-4444444444444444:admin+inference"}).auth
    assert [(c.name, sorted(c.roles)) for c in settings.credentials] == [
        ("ops", ["admin"]), ("token-2", ["admin", "inference"]), ("web", ["inference"]),
        ("token-4", ["admin", "inference"])]
    assert settings.credentials[2].token_sha256 == hashlib.sha256(b"inf-3333333333333333").digest()
    assert settings.exempt == auth.DEFAULT_EXEMPT


@pytest.mark.parametrize(("env", "says"), [
    ({"LLAMAGATE_AUTH_TOKENS": "short:admin"}, "at least 16"),
    ({"LLAMAGATE_AUTH_TOKENS": "tok-5555555555555555:root"}, "roles are admin and inference"),
    ({"LLAMAGATE_AUTH_TOKENS": "tok-5555555555555555"}, "TOKEN:ROLE"),
    ({"LLAMAGATE_AUTH_TOKENS": "tok-5555555555555555:admin:a:b"}, "TOKEN:ROLE"),
    ({"LLAMAGATE_AUTH_TOKENS": "tok-5555555555555555:admin:bad name!"}, "a name is"),
    ({"LLAMAGATE_AUTH_TOKENS": "tok-5555555555555555:admin:x,tok-5555555555555555:inference:y"}, "same token as x"),
    ({"LLAMAGATE_AUTH_TOKENS": "tok-5555555555555555:admin:x,tok-6666666666666666:inference:x"}, "name 'x' is taken"),
    ({"LLAMAGATE_AUTH_TOKENS": " , "}, "names no token"),  # a secret that did not arrive: not "auth off"
    ({"LLAMAGATE_AUTH_TOKENS": "tok-5555555555555555:admin", "LLAMAGATE_AUTH_EXEMPT": "not a service!"}, "EXEMPT"),
])
def test_a_malformed_setting_is_refused_by_name_without_echoing_the_token(env, says):
    with pytest.raises(ValueError, match=says) as caught:
        Settings.from_env(env)
    assert "LLAMAGATE_AUTH_" in str(caught.value)
    assert "5555555555555555" not in str(caught.value)


@pytest.mark.parametrize(("text", "says"), [
    ("# only a comment\n\n", "holds no token"),
    ("tok-5555555555555555\n", "line 1: expected TOKEN ROLE"),
    ("# x\ntok-5555555555555555 admin name extra\n", "line 2: expected TOKEN ROLE"),
    ("tok-5555555555555555 superuser\n", "line 1: roles are"),
])
def test_a_bad_tokens_file_is_refused_by_line(tmp_path, text, says):
    tokens = tmp_path / "tokens"
    tokens.write_text(text)
    with pytest.raises(ValueError, match=says) as caught:
        Settings.from_env({"LLAMAGATE_AUTH_TOKENS_FILE": str(tokens)})
    assert "5555555555555555" not in str(caught.value)


def test_a_tokens_file_that_cannot_be_read_is_refused(tmp_path):
    with pytest.raises(ValueError, match="LLAMAGATE_AUTH_TOKENS_FILE.*cannot read"):
        Settings.from_env({"LLAMAGATE_AUTH_TOKENS_FILE": str(tmp_path / "missing")})


def test_the_exemptions_default_to_health_and_reflection_and_can_be_emptied():
    assert auth_settings().exempt == {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                                      "grpc.reflection.v1alpha.ServerReflection"}
    assert auth_settings(LLAMAGATE_AUTH_EXEMPT="").exempt == frozenset()
    one = BearerAuth(auth_settings(LLAMAGATE_AUTH_EXEMPT="/grpc.health.v1.Health/Check"))
    assert one.exempt("/grpc.health.v1.Health/Check") and not one.exempt("/grpc.health.v1.Health/Watch")


def test_the_settings_hold_no_token():
    settings = Settings.from_env({"LLAMAGATE_AUTH_TOKENS": TOKENS})
    assert ADMIN_TOKEN not in repr(settings.auth) and INFERENCE_TOKEN not in repr(settings.auth)


# --- the check itself ------------------------------------------------------------------


def test_every_rpc_of_the_proto_has_a_role_and_only_those():
    assert set(METHOD_ROLES) == {f"/{SERVICE.full_name}/{m.name}" for m in SERVICE.methods}
    assert {name for name, role in METHOD_ROLES.items() if role == ADMIN} == {
        f"/{SERVICE.full_name}/{m}" for m in ("LoadModel", "UnloadModel", "PlanModel")}
    assert set(THROUGH) == {m.name for m in SERVICE.methods}


def test_a_llamagate_rpc_missing_from_the_table_needs_admin_and_another_services_any_token():
    assert auth.required_role(f"/{SERVICE.full_name}/SomeNewRpc") == ADMIN
    assert auth.required_role("/grpc.health.v1.Health/Check") == INFERENCE


@pytest.mark.parametrize("presented", [ADMIN_TOKEN, INFERENCE_TOKEN, WRONG_TOKEN, None, "x", "y" * 4096])
def test_a_token_is_compared_with_every_configured_one_as_equal_length_digests(monkeypatch, presented):
    compared: list[tuple[int, int]] = []

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return a == b

    monkeypatch.setattr(auth, "compare_digest", counting)
    settings = auth_settings()
    found = BearerAuth(settings).match(presented)
    # Whichever matched, or none: every token compared, each a 32-byte digest (lengths say nothing).
    assert compared == [(32, 32)] * len(settings.credentials)
    assert (found.name if found else None) == {ADMIN_TOKEN: "ops", INFERENCE_TOKEN: "chat-app"}.get(presented)


def test_the_comparison_is_the_standard_constant_time_one():
    assert auth.compare_digest is hmac.compare_digest


@pytest.mark.parametrize(("metadata", "token"), [
    ((("authorization", "Bearer abc"),), "abc"),
    ((("authorization", "bearer  abc "),), "abc"),  # the scheme is case-insensitive (RFC 6750)
    ((("x-other", "Bearer abc"), ("authorization", "Bearer def")), "def"),
    ((("authorization", "Basic abc"),), None),
    ((("authorization", "Bearer"),), None),
    ((("authorization", "Bearer "),), None),
    ((("authorization", b"Bearer abc"),), None),
    ((), None),
    (None, None),
])
def test_the_bearer_token_of_the_metadata(metadata, token):
    assert bearer_token(metadata) == token


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64))
def test_any_visible_token_is_read_back_as_sent(token):
    assert bearer_token((("authorization", f"Bearer {token}"),)) == token


# --- every RPC, through the real service -------------------------------------------------


@pytest.fixture(scope="module")
def guarded():
    """The real service with auth on, nothing loaded, and a 1 MiB request limit."""
    settings = replace(Settings.from_env(os.environ), auth=auth_settings(), max_message_bytes=1 << 20)
    service = RunningService(settings)
    yield service
    service.close()


@pytest.fixture(scope="module")
def channel(guarded):
    with grpc.insecure_channel(guarded.address) as channel:
        yield channel


def call(channel: grpc.Channel, method: str, token: str | None = None, request=None, metadata=None):
    """(code, details, ErrorInfo or None) of one call of a LlamaGate RPC with ``token`` (or that metadata)."""
    described = SERVICE.methods_by_name[method]
    request_type, reply_type = getattr(pb, described.input_type.name), getattr(pb, described.output_type.name)
    path = f"/{SERVICE.full_name}/{method}"
    kind = channel.unary_stream if described.server_streaming else channel.unary_unary
    stub = kind(path, request_serializer=request_type.SerializeToString, response_deserializer=reply_type.FromString)
    try:
        answer = stub(request or request_type(), metadata=metadata or bearer(token), timeout=10)
        if described.server_streaming:
            list(answer)
        return OK, "", None
    except grpc.RpcError as error:
        return error.code(), error.details(), error_info(error)


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_every_rpc_needs_a_valid_token_and_its_role(channel, method):
    admin_only = METHOD_ROLES[f"/{SERVICE.full_name}/{method}"] == ADMIN
    codes = {who: call(channel, method, token)[0] for who, token in
             (("none", None), ("wrong", WRONG_TOKEN), ("inference", INFERENCE_TOKEN), ("admin", ADMIN_TOKEN))}
    assert codes == {
        "none": grpc.StatusCode.UNAUTHENTICATED,
        "wrong": grpc.StatusCode.UNAUTHENTICATED,
        "inference": grpc.StatusCode.PERMISSION_DENIED if admin_only else THROUGH[method],
        "admin": THROUGH[method],
    }


def test_missing_wrong_and_malformed_tokens_get_one_answer_that_names_no_token(channel):
    malformed = [(("authorization", f"Basic {ADMIN_TOKEN}"),), (("authorization", ADMIN_TOKEN),)]
    answers = [call(channel, "Generate", token) for token in (None, WRONG_TOKEN, "short")]
    answers += [call(channel, "Generate", metadata=metadata) for metadata in malformed]
    [(code, details, info)] = {(c, d, i.SerializeToString()) for c, d, i in answers}  # one and the same
    info = error_details_pb2.ErrorInfo.FromString(info)
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in details and "LLAMAGATE_TOKEN" in details
    assert ADMIN_TOKEN not in details and INFERENCE_TOKEN not in details
    assert info.reason == "UNAUTHENTICATED"


def test_a_missing_role_is_permission_denied_naming_the_role_and_the_method(channel):
    code, details, info = call(channel, "LoadModel", INFERENCE_TOKEN)
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "/llamagate.v1.LlamaGateService/LoadModel needs the admin role" in details and "chat-app" in details
    assert INFERENCE_TOKEN not in details
    assert info is not None and info.reason == "PERMISSION_DENIED"
    assert dict(info.metadata) == {"method": "/llamagate.v1.LlamaGateService/LoadModel", "required_role": "admin"}


def test_health_and_reflection_answer_without_a_token(channel):
    assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    listed = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    assert SERVICE.full_name in {s.name for s in listed[0].list_services_response.service}


def test_the_size_check_still_runs_behind_auth_and_a_refused_caller_learns_nothing_of_it(channel):
    big = pb.GenerateRequest(messages=[pb.Message(role=pb.ROLE_USER, text="x" * (3 << 19))])
    code, details, _ = call(channel, "Generate", ADMIN_TOKEN, big)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "LLAMAGATE_MAX_MESSAGE_MB" in details
    assert call(channel, "Generate", None, big)[0] is grpc.StatusCode.UNAUTHENTICATED


def test_with_no_exemptions_health_and_reflection_need_a_token_too():
    settings = replace(Settings.from_env(os.environ), auth=auth_settings(LLAMAGATE_AUTH_EXEMPT=""))
    service = RunningService(settings)
    try:
        with grpc.insecure_channel(service.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

            def watch(token):  # a stream written to the context, not yielded
                stream = health.Watch(health_pb2.HealthCheckRequest(), metadata=bearer(token), timeout=5)
                first = next(stream).status
                stream.cancel()
                return first

            def reflect(token):  # a request stream
                return list(reflection.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=bearer(token),
                    timeout=5))

            for refused in (lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5),
                            lambda: watch(None), lambda: reflect(None), lambda: reflect(WRONG_TOKEN)):
                with pytest.raises(grpc.RpcError) as caught:
                    refused()
                assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            serving = health_pb2.HealthCheckResponse.SERVING
            assert health.Check(health_pb2.HealthCheckRequest(), metadata=bearer(INFERENCE_TOKEN)).status == serving
            assert watch(INFERENCE_TOKEN) == serving
            assert reflect(INFERENCE_TOKEN)[0].list_services_response.service
    finally:
        service.close()


# --- who called -------------------------------------------------------------------------


def test_the_handler_sees_the_callers_token_name_for_unary_and_streaming_calls():
    """A stand-in service behind the real interceptors answers client_name()."""
    async def who(request: bytes, context) -> bytes:
        await asyncio.sleep(0.01)  # two calls at once: each keeps its own name
        return auth.client_name().encode()

    async def who_stream(request: bytes, context):
        for _ in range(2):
            await asyncio.sleep(0.01)
            yield auth.client_name().encode()

    async def main() -> list:
        server = grpc.aio.server(interceptors=interceptors(replace(Settings(), auth=auth_settings())))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Who", {
            "Unary": grpc.unary_unary_rpc_method_handler(who),
            "Stream": grpc.unary_stream_rpc_method_handler(who_stream)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                unary, stream = channel.unary_unary("/test.Who/Unary"), channel.unary_stream("/test.Who/Stream")

                async def streamed(token: str) -> list[bytes]:
                    return [r async for r in stream(b"", metadata=bearer(token))]

                return await asyncio.gather(unary(b"", metadata=bearer(ADMIN_TOKEN)),
                                            unary(b"", metadata=bearer(INFERENCE_TOKEN)),
                                            streamed(INFERENCE_TOKEN), streamed(ADMIN_TOKEN))
        finally:
            await server.stop(None)

    assert asyncio.run(main()) == [b"ops", b"chat-app", [b"chat-app"] * 2, [b"ops"] * 2]
    assert auth.client_name() == ""  # outside an RPC


def test_no_log_line_holds_a_token(caplog, capfd, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN_TOKEN} admin ops\n{INFERENCE_TOKEN} inference chat-app\n")
    environment = {**os.environ, "LLAMAGATE_AUTH_TOKENS_FILE": str(tokens)}
    with caplog.at_level(logging.DEBUG):
        service = RunningService(Settings.from_env(environment))
        try:
            with grpc.insecure_channel(service.address) as channel:
                for method, token in (("ListModels", ADMIN_TOKEN), ("Generate", INFERENCE_TOKEN),
                                      ("LoadModel", INFERENCE_TOKEN), ("GetStatus", WRONG_TOKEN),
                                      ("UnloadModel", None)):
                    call(channel, method, token)
        finally:
            service.close()
    logged = "\n".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    assert "authentication on: 2 tokens (ops admin, chat-app inference)" in logged
    assert "refused /llamagate.v1.LlamaGateService/LoadModel" in logged and "no valid token" in logged
    printed = "".join(capfd.readouterr())
    for token in (ADMIN_TOKEN, INFERENCE_TOKEN, WRONG_TOKEN):
        assert token not in logged and token not in printed


# --- the command line sends the token ------------------------------------------------------


def test_the_commands_send_llamagate_token_or_the_token_file(guarded, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("LLAMAGATE_TOKEN", raising=False)
    assert cli.main(["status", "--address", guarded.address]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err

    monkeypatch.setenv("LLAMAGATE_TOKEN", INFERENCE_TOKEN)
    assert cli.main(["status", "--address", guarded.address]) == 0
    assert cli.main(["unload", "--address", guarded.address]) == 1  # an inference token may not
    assert "needs the admin role" in capsys.readouterr().err

    token_file = tmp_path / "token"
    token_file.write_text(f"# the ops token\n{ADMIN_TOKEN}\n")
    assert cli.main(["unload", "--address", guarded.address, "--token-file", str(token_file)]) == 0  # the file wins
    assert "nothing was loaded" in capsys.readouterr().out


def test_a_token_file_that_cannot_be_read_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["status", "--token-file", str(tmp_path / "missing")])
    assert exited.value.code == 2 and "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    with pytest.raises(SystemExit):
        cli.main(["status", "--token-file", str(empty)])
    assert "holds no token" in capsys.readouterr().err

