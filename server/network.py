"""Settings for the service's front door: TLS on both ends, and how long a
shutdown lets requests in flight finish. No I/O here: the files are read when
serve starts or a client command dials (server/tls.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_SHUTDOWN_GRACE_S = 30.0


@dataclass(frozen=True)
class ServerTls:
    cert: str = ""  # LLAMAGATE_TLS_CERT: serve's certificate chain (PEM)
    key: str = ""  # LLAMAGATE_TLS_KEY: its private key (PEM, unencrypted)
    client_ca: str = ""  # LLAMAGATE_TLS_CLIENT_CA: when set, mutual TLS: clients need a certificate it signed

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.client_ca)


@dataclass(frozen=True)
class ClientTls:
    ca: str = ""  # LLAMAGATE_TLS_CA: the CA the client commands trust (else the system's roots)
    cert: str = ""  # LLAMAGATE_TLS_CLIENT_CERT: the client commands' certificate, for mutual TLS
    key: str = ""  # LLAMAGATE_TLS_CLIENT_KEY
    on: bool = False  # --tls: TLS even with none of the files (a public CA's certificate)

    @property
    def enabled(self) -> bool:
        return bool(self.on or self.ca or self.cert or self.key)


@dataclass(frozen=True)
class NetworkSettings:
    server_tls: ServerTls = field(default_factory=ServerTls)
    client_tls: ClientTls = field(default_factory=ClientTls)
    # LLAMAGATE_SHUTDOWN_GRACE_S: after SIGTERM, how long requests in flight may take to finish
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NetworkSettings:
        """Raises ValueError naming the variable when one is malformed."""
        def path(name: str) -> str:
            return env.get(name, "").strip()

        return cls(
            server_tls=ServerTls(path("LLAMAGATE_TLS_CERT"), path("LLAMAGATE_TLS_KEY"),
                                 path("LLAMAGATE_TLS_CLIENT_CA")),
            client_tls=ClientTls(path("LLAMAGATE_TLS_CA"), path("LLAMAGATE_TLS_CLIENT_CERT"),
                                 path("LLAMAGATE_TLS_CLIENT_KEY")),
            shutdown_grace_s=parse_grace(env.get("LLAMAGATE_SHUTDOWN_GRACE_S", ""), "LLAMAGATE_SHUTDOWN_GRACE_S"),
        )


def parse_grace(text: str, name: str) -> float:
    """Seconds, 0 to 3600 (decimals allowed); empty is the default."""
    text = text.strip()
    if not text:
        return DEFAULT_SHUTDOWN_GRACE_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= 3600:  # NaN fails this too
        raise ValueError(f"{name} must be a number of seconds between 0 and 3600, got {text!r}")
    return seconds
