"""What tells operators what the service does: the metrics endpoint and the log format.

Read once from the environment (``LLAMAGATE_METRICS_ADDRESS``,
``LLAMAGATE_LOG_FORMAT``); ``serve --metrics`` and ``--log-format`` win over
it. No metrics endpoint unless an address is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llamagate.server.address import Address, parse_address

LOG_FORMATS = ("auto", "text", "json")  # auto: text on a terminal, JSON lines otherwise (a collector reads them)


@dataclass(frozen=True)
class ObservabilitySettings:
    metrics: Address | None = None  # where Prometheus scrapes /metrics; None: no endpoint
    log_format: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ObservabilitySettings:
        """Raises ValueError naming the variable when one is malformed."""
        raw = env.get("LLAMAGATE_METRICS_ADDRESS", "").strip()
        try:
            metrics = metrics_address(raw) if raw else None
        except ValueError as error:
            raise ValueError(f"LLAMAGATE_METRICS_ADDRESS: {error}") from None
        try:
            log_format = check_log_format(env.get("LLAMAGATE_LOG_FORMAT", "").strip() or "auto")
        except ValueError as error:
            raise ValueError(f"LLAMAGATE_LOG_FORMAT: {error}") from None
        return cls(metrics, log_format)


def metrics_address(text: str) -> Address:
    """``HOST:PORT`` or ``[IPv6]:PORT`` (port 0: any free port); ValueError saying what is wrong."""
    address = parse_address(text, listening=True)
    if address.is_unix:
        raise ValueError(f"{text!r}: the metrics endpoint is HTTP on TCP (HOST:PORT), as Prometheus scrapes it")
    return address


def check_log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise ValueError(f"the log format is one of {', '.join(LOG_FORMATS)}, not {text!r}")
    return text
