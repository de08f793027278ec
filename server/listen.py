"""Where and how serve listens: the address checked, the port free, TLS.

gRPC alone would start a second service on a port already served (it binds
with SO_REUSEPORT, and the two split the traffic), take over a live unix
socket (it unlinks the path before binding), and log its own bind errors. So
the address is parsed (server/address.py), probed with a plain socket first,
and any failure is one ListenError naming the cause; gRPC then binds without
SO_REUSEPORT, which also refuses a port taken between the probe and the bind.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass

import grpc

from llamagate.server.address import Address, parse_address
from llamagate.server.settings import Settings
from llamagate.server.tls import TlsError, server_credentials

log = logging.getLogger(__name__)

OPTIONS: list[tuple[str, int | str]] = [("grpc.so_reuseport", 0)]  # a taken port is an error, not a shared one


class ListenError(Exception):
    """The address to serve on is taken or invalid, or a TLS file is wrong: serve exits 2."""


@dataclass(frozen=True)
class Listener:
    address: Address
    credentials: grpc.ServerCredentials | None  # None: plaintext


def prepare(settings: Settings) -> Listener:
    """Everything about listening that can be checked before binding; ListenError when wrong."""
    try:
        address = parse_address(settings.address, listening=True)
    except ValueError as error:
        raise ListenError(f"cannot listen on {error}") from None
    tls = settings.network.server_tls
    try:
        credentials = server_credentials(tls) if tls.enabled else None
    except TlsError as error:
        raise ListenError(str(error)) from None
    (_probe_unix if address.is_unix else _probe_tcp)(address)
    return Listener(address, credentials)


def where(settings: Settings, port: int) -> str:
    """Where serve listens, once bound to ``port``: ``127.0.0.1:50051 with TLS``."""
    tls = settings.network.server_tls
    security = " with mutual TLS" if tls.client_ca else " with TLS" if tls.enabled else ""
    return f"{parse_address(settings.address, listening=True).with_port(port)}{security}"


def listen(server: grpc.aio.Server, settings: Settings) -> int:
    """Bind ``server`` as the settings say: the port bound (0 picks one; a unix socket's is 1)."""
    listener = prepare(settings)
    target = listener.address.target
    try:
        if listener.credentials is None:
            return server.add_insecure_port(target)
        return server.add_secure_port(target, listener.credentials)
    except RuntimeError:  # grpc's way of saying the bind failed (taken since the probe, say)
        raise ListenError(f"cannot listen on {target}: gRPC could not bind it") from None


def _probe_tcp(address: Address) -> None:
    """Bind each address the host resolves to, as gRPC will, and let go."""
    try:
        resolved = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ListenError(f"cannot listen on {address}: {address.host!r} does not resolve ({error.strerror})") from None
    failures = []
    for family, kind, proto, _, sockaddr in resolved:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is no conflict
            try:
                probe.bind(sockaddr)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise ListenError(f"cannot listen on {address}: the port is in use (another llamagate?)") from None
                failures.append(error)
    if len(failures) == len(resolved):  # gRPC binds as long as one of them does
        raise ListenError(f"cannot listen on {address}: {failures[0].strerror}")


def _probe_unix(address: Address) -> None:
    """A live socket is refused; a stale one (its service died) is left for gRPC, which replaces it."""
    path = address.path
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            raise ListenError(f"cannot listen on {address}: the folder {parent} does not exist") from None
        return
    except OSError as error:
        raise ListenError(f"cannot listen on {address}: {error.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"cannot listen on {address}: {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("%s is a socket nobody listens on (a service that died): replacing it", path)
            return
        except OSError as error:
            raise ListenError(f"cannot listen on {address}: {error.strerror or error}") from None
    raise ListenError(f"cannot listen on {address}: a service is listening there (another llamagate?)")
