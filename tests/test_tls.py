"""TLS and mutual TLS from PEM files: a TLS service answers TLS clients only;
with a client CA, only clients holding a certificate it signed. Certificates
are made here, with trustme."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
import trustme
from conftest import RunningService
from cryptography.hazmat.primitives import serialization
from test_cli import llamagate

from llamagate.server.network import ClientTls, NetworkSettings, ServerTls
from llamagate.server.settings import Settings
from llamagate.server.tls import TlsError, channel_credentials, server_credentials
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the service's and the client's certificates
    cert: Path  # the service's, for 127.0.0.1 and localhost
    key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    paths = {}
    for name, issuer, identity in (("service", ca, ("127.0.0.1", "localhost")), ("client", ca, ("alice@example.com",)),
                                   ("stranger", other, ("mallory@example.com",))):
        issued = issuer.issue_cert(*identity)
        (folder / f"{name}.pem").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(folder / f"{name}.key"))
        paths[name] = (folder / f"{name}.pem", folder / f"{name}.key")
    return Pki(folder / "ca.pem", *paths["service"], *paths["client"], *paths["stranger"])


def tls_service(server_tls: ServerTls) -> RunningService:
    settings = Settings.from_env(os.environ)
    return RunningService(replace(settings, network=replace(NetworkSettings(), server_tls=server_tls)))


@pytest.fixture(scope="module")
def tls(pki):
    service = tls_service(ServerTls(str(pki.cert), str(pki.key)))
    yield service
    service.close()


@pytest.fixture(scope="module")
def mtls(pki):
    service = tls_service(ServerTls(str(pki.cert), str(pki.key), client_ca=str(pki.ca)))
    yield service
    service.close()


def status_over(channel: grpc.Channel) -> pb.ModelInfo:
    with channel:
        return pb_grpc.LlamaGateServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=5).model


def secure(service: RunningService, tls: ClientTls) -> grpc.Channel:
    return grpc.secure_channel(service.address, channel_credentials(tls))


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        status_over(channel)
    return caught.value.code()


def test_a_tls_service_answers_a_client_trusting_its_ca(tls, pki):
    assert status_over(secure(tls, ClientTls(ca=str(pki.ca)))).state == pb.MODEL_STATE_EMPTY


def test_a_tls_service_refuses_a_plaintext_client(tls):
    assert refused(grpc.insecure_channel(tls.address)) == grpc.StatusCode.UNAVAILABLE


def test_a_tls_client_refuses_a_service_its_ca_did_not_sign(tls):
    stranger_ca = trustme.CA().cert_pem.bytes()
    assert refused(grpc.secure_channel(tls.address, grpc.ssl_channel_credentials(stranger_ca))) == \
        grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_answers_a_client_whose_certificate_its_ca_signed(mtls, pki):
    client = ClientTls(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
    assert status_over(secure(mtls, client)).state == pb.MODEL_STATE_EMPTY


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls, pki):
    assert refused(secure(mtls, ClientTls(ca=str(pki.ca)))) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(mtls, pki):
    stranger = ClientTls(ca=str(pki.ca), cert=str(pki.stranger_cert), key=str(pki.stranger_key))
    assert refused(secure(mtls, stranger)) == grpc.StatusCode.UNAVAILABLE


def test_the_client_commands_speak_mutual_tls(mtls, pki):
    result = llamagate("status", "--address", mtls.address, "--tls-ca", str(pki.ca), "--tls-cert",
                       str(pki.client_cert), "--tls-key", str(pki.client_key), timeout=60)
    assert result.returncode == 0 and "no model loaded" in result.stdout, result.stderr
    plain = llamagate("status", "--address", mtls.address, "--connect-timeout", "1", timeout=60)
    assert plain.returncode == 1 and "cannot reach" in plain.stderr


def test_the_client_commands_take_their_tls_files_from_the_environment(tls, pki, monkeypatch):
    monkeypatch.setenv("LLAMAGATE_TLS_CA", str(pki.ca))
    result = llamagate("status", "--address", tls.address, timeout=60)
    assert result.returncode == 0, result.stderr


# -- Wrong files: one line, exit 2, before anything starts -----------------------


def encrypted_key(pki: Pki, folder: Path) -> Path:
    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    path = folder / "encrypted.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")))
    return path


@pytest.mark.parametrize(("case", "why"), [
    ("missing cert", "cannot read the certificate"),
    ("key of another", "does not belong to the certificate"),
    ("key not pem", "is not a PEM private key"),
    ("cert not pem", "holds no PEM certificate"),
    ("encrypted key", "is encrypted"),
    ("no key", "needs a certificate and its key"),
    ("client ca not pem", "the CA certificate"),
])
def test_a_wrong_tls_file_is_one_clear_error(pki, tmp_path, case, why):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    tls = {
        "missing cert": ServerTls(str(tmp_path / "absent.pem"), str(pki.key)),
        "key of another": ServerTls(str(pki.cert), str(pki.client_key)),
        "key not pem": ServerTls(str(pki.cert), str(garbage)),
        "cert not pem": ServerTls(str(garbage), str(pki.key)),
        "encrypted key": ServerTls(str(pki.cert), str(encrypted_key(pki, tmp_path))),
        "no key": ServerTls(str(pki.cert)),
        "client ca not pem": ServerTls(str(pki.cert), str(pki.key), client_ca=str(garbage)),
    }[case]
    with pytest.raises(TlsError, match=why):
        server_credentials(tls)


def test_serve_with_a_mismatched_key_exits_2_with_one_line(pki):
    result = llamagate("serve", "--no-model", "--listen", "127.0.0.1:0", "--tls-cert", str(pki.cert),
                       "--tls-key", str(pki.client_key), timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "does not belong to the certificate" in result.stderr


def test_a_client_with_an_unreadable_ca_exits_2_with_one_line(tmp_path):
    result = llamagate("status", "--address", "127.0.0.1:50051", "--tls-ca", str(tmp_path / "absent.pem"), timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot read the CA certificate" in result.stderr


def test_a_client_certificate_needs_its_key(pki):
    with pytest.raises(TlsError, match="needs its key"):
        channel_credentials(ClientTls(cert=str(pki.client_cert)))
