"""TLS from PEM files, for serve (mutual when a client CA is named) and for the
client commands.

gRPC reads PEM bytes and only finds out at the first handshake that a key does
not match its certificate (every connection then fails, the service looks up).
So each file is checked here first, with the standard library's ``ssl``, and a
wrong one is one clear error before anything starts.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from llamagate.server.network import ClientTls, ServerTls


class TlsError(ValueError):
    """A TLS file is missing, unreadable, or not what it should be."""


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    if not (tls.cert and tls.key):
        raise TlsError("TLS needs a certificate and its key: --tls-cert and --tls-key (or LLAMAGATE_TLS_CERT and"
                       " LLAMAGATE_TLS_KEY)")
    cert, key = _pair(tls.cert, tls.key, ssl.PROTOCOL_TLS_SERVER)
    client_ca = _authority(tls.client_ca) if tls.client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    if bool(tls.cert) != bool(tls.key):
        raise TlsError("a client certificate needs its key: --tls-cert and --tls-key (or LLAMAGATE_TLS_CLIENT_CERT"
                       " and LLAMAGATE_TLS_CLIENT_KEY)")
    cert, key = _pair(tls.cert, tls.key, ssl.PROTOCOL_TLS_CLIENT) if tls.cert else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=_authority(tls.ca) if tls.ca else None,
                                        private_key=key, certificate_chain=cert)


def _pair(cert_path: str, key_path: str, protocol: int) -> tuple[bytes, bytes]:
    """A certificate chain and its private key, as PEM bytes, checked to belong together."""
    cert, key = _read(cert_path, "certificate"), _read(key_path, "key")
    _certificates(cert_path, "certificate")

    def encrypted() -> bytes:  # ssl asks for a passphrase only when the key has one
        raise TlsError(f"the key {key_path} is encrypted; llamagate takes an unencrypted key (file mode 0600)")

    try:
        ssl.SSLContext(protocol).load_cert_chain(_local(cert_path), _local(key_path), password=encrypted)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(f"the key {key_path} does not belong to the certificate {cert_path}") from None
        raise TlsError(f"the key {key_path} is not a PEM private key") from None
    return cert, key


def _authority(path: str) -> bytes:
    """A CA bundle: the certificates a peer's certificate must chain to."""
    pem = _read(path, "CA certificate")
    _certificates(path, "CA certificate")
    return pem


def _certificates(path: str, what: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=_local(path))
    except ssl.SSLError:
        raise TlsError(f"the {what} {path} holds no PEM certificate") from None


def _read(path: str, what: str) -> bytes:
    try:
        return Path(_local(path)).read_bytes()
    except OSError as error:
        raise TlsError(f"cannot read the {what} {path}: {error.strerror or error}") from None


def _local(path: str) -> str:
    return str(Path(path).expanduser())
