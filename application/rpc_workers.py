"""The RPC workers this service may reach: the operator's list, which of our models holds each, their last probe.

A worker serves one client at a time, so a worker one of our llama-servers
holds is never probed (the probe would only queue behind it): its last
report stands, marked HELD. Probes run in worker threads, all of a load's at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from llamagate.domain.errors import LlamagateError
from llamagate.domain.ports import WorkerProbe
from llamagate.domain.rpc_workers import (
    ALLOWLIST,
    WorkerReport,
    WorkerState,
    check_allowed,
    load_blocker,
    normalized,
    parse_allowlist,
)

PROBE_TIMEOUT_S = 2.0  # before a load or a plan: a worker on a LAN answers HELLO in milliseconds
FAILURE_PROBE_TIMEOUT_S = 0.5  # when an engine died: a generation waits to hear which worker went


@dataclass(frozen=True)
class RpcWorkerSettings:
    allowed: frozenset[str] = frozenset()  # LLAMAGATE_RPC_WORKERS: the only workers a load may name

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RpcWorkerSettings:
        """Raises ValueError naming the variable when an entry is malformed."""
        return cls(parse_allowlist(env.get(ALLOWLIST, "")))


class RpcWorkers:
    def __init__(self, probe: WorkerProbe | None, allowed: Iterable[str] = (),
                 timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._probe = probe
        self._allowed = frozenset(allowed)
        self._timeout_s = timeout_s
        self._holders: dict[str, tuple[object, str]] = {}  # address -> (owner, its model's id)
        self._last: dict[str, WorkerReport] = {}

    def check_allowed(self, addresses: Sequence[str]) -> None:
        """PermissionDenied for an address the operator did not list."""
        check_allowed(addresses, self._allowed if self._probe is not None else ())

    async def survey(self, addresses: Sequence[str], *, timeout_s: float | None = None) -> tuple[WorkerReport, ...]:
        """A report per worker, in order: probed now, or the last figures of one our engine holds."""
        wanted = normalized(addresses)
        timeout = self._timeout_s if timeout_s is None else timeout_s
        reports = await asyncio.gather(*(self._report(a, timeout) for a in wanted))
        return tuple(reports)

    async def _report(self, address: str, timeout_s: float) -> WorkerReport:
        holder = self._holders.get(address)
        if holder is not None:
            last = self._last.get(address, WorkerReport(address, WorkerState.HELD))
            return replace(last, state=WorkerState.HELD,
                           detail=f"serves model {holder[1]}: figures from the probe before its load")
        assert self._probe is not None  # check_allowed refused every address without one
        report = await asyncio.to_thread(self._probe.probe, address, timeout_s)
        if report.usable:
            self._last[address] = report
        return report

    def blocker(self, reports: Sequence[WorkerReport], owner: object) -> LlamagateError | None:
        """Why a load by ``owner`` cannot start on these workers now (the first reason), or None."""
        for report in reports:
            holder = self._holders.get(report.address)
            other = holder[1] if holder is not None and holder[0] is not owner else ""
            if (problem := load_blocker(report, held_by_other=other)) is not None:
                return problem
        return None

    def hold(self, addresses: Sequence[str], owner: object, model: str) -> None:
        """``owner``'s llama-server is about to connect to these: no probe until `release`."""
        for address in normalized(addresses):
            self._holders[address] = (owner, model)

    def release(self, owner: object) -> None:
        for address in [a for a, (o, _) in self._holders.items() if o is owner]:
            del self._holders[address]

    async def lost(self, addresses: Sequence[str]) -> WorkerReport | None:
        """After our engine on these workers died: the first that does not answer (UNREACHABLE), if any."""
        if not addresses or self._probe is None:
            return None
        for report in await self.survey(addresses, timeout_s=FAILURE_PROBE_TIMEOUT_S):
            if report.state is WorkerState.UNREACHABLE:
                return report
        return None
