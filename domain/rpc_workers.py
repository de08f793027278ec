"""llama.cpp RPC workers (ggml-rpc-server): their addresses, what a probe of one found, the rules a load meets.

A model bigger than one machine keeps its layers on workers that llama-server
reaches over TCP (``--rpc``). A worker has no authentication, so the service
reaches only the addresses its operator lists (LLAMAGATE_RPC_WORKERS); and a
worker serves one client at a time, so two of our models never share one.
Pure: the probe itself is ``adapters/rpc_probe``'s, the bookkeeping of who
holds which worker ``application/rpc_workers``'.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from llamagate.domain.errors import (
    InvalidArgument,
    LlamagateError,
    PermissionDenied,
    WorkerUnavailable,
    WorkerUnusable,
)

# llama.cpp takes at most this many workers (GGML_RPC_MAX_SERVERS in ggml-rpc.h).
MAX_WORKERS = 16
ALLOWLIST = "LLAMAGATE_RPC_WORKERS"
FIELD = "options.rpc_workers"

# A host name or IPv4 address, then a port. llama.cpp splits an endpoint at
# its first ':' (parse_endpoint in ggml-rpc.cpp), so an IPv6 literal cannot work.
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", re.ASCII)


class WorkerState(enum.Enum):
    READY = "ready"  # answered HELLO and every question: its devices and memory are known
    BUSY = "busy"  # took the connection but did not answer in time: it serves another client
    UNREACHABLE = "unreachable"  # refused, not reached in time, or hung up without answering
    INCOMPATIBLE = "incompatible"  # another protocol version, or replies unlike a ggml RPC worker
    HELD = "held"  # serves one of this service's models: never probed then, its last figures stand


@dataclass(frozen=True)
class WorkerDevice:
    index: int  # the worker's own device number (llama-server names it RPC<n>[host:port])
    free_bytes: int
    total_bytes: int

    @property
    def memory_is_ram(self) -> bool:
        """A CPU device reports its RAM as both free and total (ggml-cpu's get_memory:
        "free" system memory is ill-defined there), so its figure is not free memory."""
        return self.free_bytes == self.total_bytes


@dataclass(frozen=True)
class WorkerReport:
    """One worker as the planner sees it."""

    address: str  # host:port, as listed
    state: WorkerState
    devices: tuple[WorkerDevice, ...] = ()
    protocol: str = ""  # the version its HELLO answered: "7.0.0"
    detail: str = ""  # why it is not READY, or whose load its HELD figures come from

    @property
    def usable(self) -> bool:
        return self.state in (WorkerState.READY, WorkerState.HELD)

    @property
    def memory_is_ram(self) -> bool:
        return bool(self.devices) and all(d.memory_is_ram for d in self.devices)

    def describe(self) -> str:
        """For reasons and errors: "RPC worker 10.0.0.2:50052 is busy (...)"."""
        if self.usable:
            what = ", ".join(f"device {d.index}: {_mib(d.free_bytes)} "
                             + ("of RAM (a CPU worker reports its RAM, not its free memory)" if d.memory_is_ram
                                else f"free of {_mib(d.total_bytes)}") for d in self.devices)
            held = f"; {self.detail}" if self.detail else ""
            return f"RPC worker {self.address} (protocol {self.protocol}): {what or 'no devices'}{held}"
        return f"RPC worker {self.address} is {self.state.value}" + (f" ({self.detail})" if self.detail else "")


def parse_address(text: str) -> str:
    """``host:port`` (host lowercased, whitespace around it dropped); InvalidArgument when malformed."""
    value = text.strip()
    host, colon, port = value.rpartition(":")
    if not colon or not host:
        raise InvalidArgument(f"{_show(text)} is not host:port (such as 10.0.0.2:50052)")
    if ":" in host or host.startswith("["):
        raise InvalidArgument(f"{_show(text)}: llama.cpp cannot reach an IPv6 literal (it splits an endpoint at its "
                              "first ':'); use an IPv4 address or a host name")
    if not _HOST.fullmatch(host):
        raise InvalidArgument(f"{_show(text)}: {_show(host)} is not a host name or IPv4 address")
    if not (port.isdigit() and port.isascii() and 1 <= int(port) <= 65535):
        raise InvalidArgument(f"{_show(text)}: the port must be 1..65535")
    return f"{host.lower()}:{int(port)}"


def check_addresses(addresses: Sequence[str]) -> None:
    """A load's workers: each well formed, none twice, at most MAX_WORKERS (InvalidArgument naming the entry)."""
    if len(addresses) > MAX_WORKERS:
        raise InvalidArgument(f"{len(addresses)} workers: llama.cpp takes at most {MAX_WORKERS}", field=FIELD)
    seen: set[str] = set()
    for i, text in enumerate(addresses):
        try:
            address = parse_address(text)
        except InvalidArgument as error:
            raise InvalidArgument(error.description, field=f"{FIELD}[{i}]") from None
        if address in seen:
            raise InvalidArgument(f"{address} is listed twice", field=f"{FIELD}[{i}]")
        seen.add(address)


def normalized(addresses: Sequence[str]) -> tuple[str, ...]:
    """The addresses as parse_address spells them (call check_addresses first)."""
    return tuple(parse_address(a) for a in addresses)


def parse_allowlist(raw: str) -> frozenset[str]:
    """LLAMAGATE_RPC_WORKERS: comma-separated host:port; ValueError naming the variable when malformed."""
    entries = [entry for entry in raw.split(",") if entry.strip()]
    try:
        return frozenset(parse_address(entry) for entry in entries)
    except InvalidArgument as error:
        raise ValueError(f"{ALLOWLIST}: {error.description}") from None


def check_allowed(addresses: Sequence[str], allowed: Collection[str]) -> None:
    """PermissionDenied for a worker the operator did not list: a worker runs
    whatever graph it is sent, so only the operator's own may be reached."""
    for i, address in enumerate(normalized(addresses)):
        if address not in allowed:
            why = (f"this service reaches no RPC workers ({ALLOWLIST} is empty)" if not allowed else
                   f"{address} is not one of the RPC workers this service may reach ({ALLOWLIST})")
            raise PermissionDenied(f"{FIELD}[{i}]: {why}")


def load_blocker(report: WorkerReport, *, held_by_other: str = "") -> LlamagateError | None:
    """Why a load cannot start on this worker now; None when it can."""
    if held_by_other:
        return WorkerUnusable(f"RPC worker {report.address} serves model {held_by_other}; a worker serves one "
                              "llama-server at a time: unload that model first, or name another worker",
                              address=report.address)
    if report.state is WorkerState.INCOMPATIBLE:
        return WorkerUnusable(report.describe(), address=report.address)
    if not report.usable:
        return WorkerUnavailable(report.describe(), address=report.address)
    if not report.devices:
        return WorkerUnusable(f"RPC worker {report.address} reports no devices", address=report.address)
    return None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def _show(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
