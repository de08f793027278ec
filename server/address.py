"""The addresses ``--listen``, ``--address`` and LLAMAGATE_ADDRESS take.

``HOST:PORT`` (an IPv4 address or a DNS name), ``[IPv6]:PORT`` and
``unix:PATH`` (gRPC's own scheme; ``unix:///abs/path`` too). Parsed here, with
no I/O, so that a bad address is one clear error before anything starts,
instead of what gRPC does with it (``127.0.0.1:99999`` listens on port 34463,
``127.0.0.1`` on port 443).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")  # getaddrinfo takes "_" (compose service names)
_UNIX_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, the last one a NUL
_FORMS = "HOST:PORT, [IPv6]:PORT or unix:PATH"


@dataclass(frozen=True)
class Address:
    host: str = ""  # an IPv4 or IPv6 address (no brackets) or a DNS name; "" for a unix socket
    port: int = 0
    path: str = ""  # the unix socket's path

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    @property
    def target(self) -> str:
        """gRPC's spelling: what a server binds and a channel dials."""
        if self.is_unix:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def with_port(self, port: int) -> Address:
        """The address actually bound (after port 0 picked one); a unix socket has none."""
        return self if self.is_unix else replace(self, port=port)

    def __str__(self) -> str:
        return self.target


def parse_address(text: str, *, listening: bool) -> Address:
    """``text`` as an Address; ValueError saying what is wrong. Port 0 (any
    free port) only when ``listening``: a client cannot call port 0."""
    text = text.strip()
    try:
        return _unix(text) if text.startswith("unix:") else _tcp(text, listening)
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None


def _unix(text: str) -> Address:
    path = text.removeprefix("unix:")
    if path.startswith("//"):  # the URI form: unix:///run/llamagate.sock
        path = path[2:]
        if not path.startswith("/"):
            raise ValueError("unix:// takes an absolute path, as in unix:///run/llamagate.sock")
    if not path:
        raise ValueError("the socket's path is empty")
    if "\0" in path:
        raise ValueError("the socket's path holds a NUL character")
    if len(path.encode()) > _UNIX_PATH_MAX:
        raise ValueError(f"the socket's path is {len(path.encode())} bytes; the system allows {_UNIX_PATH_MAX}")
    return Address(path=path)


def _tcp(text: str, listening: bool) -> Address:
    bracketed = re.fullmatch(r"\[([^\]]*)\]:(.*)", text, re.DOTALL)
    if bracketed:
        host, port = bracketed.groups()
        _ipv6(host)
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ValueError(f"no port (an address is {_FORMS})")
        if ":" in host:
            raise ValueError("an IPv6 address goes in brackets, as in [::1]:50051")
        _host(host)
    return Address(host=host, port=_port(port, listening))


def _ipv6(host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv6 address") from None


def _host(host: str) -> None:
    if not host:
        raise ValueError("no host (0.0.0.0 or [::] listen on every interface)")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    elif len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise ValueError(f"{host!r} is not a host name")


def _port(port: str, listening: bool) -> int:
    if not _PORT.fullmatch(port):
        raise ValueError(f"port {port!r} is not a number")
    low = 0 if listening else 1
    if not low <= int(port) <= 65535:
        also = ", or 0 for any free port" if listening else ""
        raise ValueError(f"port {int(port)} is out of range (1 to 65535{also})")
    return int(port)
