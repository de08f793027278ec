"""The slot's operation runner: one at a time, the latest request winning."""

from __future__ import annotations

import asyncio

import pytest

from llamagate.application.latest_wins import LatestWins, Operation
from llamagate.domain.errors import Superseded


async def until_logged(log: list[str], line: str) -> None:
    while line not in log:
        await asyncio.sleep(0)


def recording(log: list[str], name: str, hold: asyncio.Event | None = None):
    async def body(op: Operation) -> None:
        log.append(f"{name} starts")
        try:
            if hold is not None:
                await hold.wait()
            await asyncio.sleep(0)
            log.append(f"{name} ends")
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # its clean-up takes a while
            log.append(f"{name} cleaned up ({'superseded' if op.superseded else 'abandoned'})")
            raise
    return body


def test_operations_never_overlap_and_a_later_one_waits_for_the_clean_up_of_the_one_it_cancels():
    async def main() -> list[str]:
        runner, log = LatestWins(), []
        first = runner.submit(runner.ticket(), Operation("a", recording(log, "a", asyncio.Event())))
        await until_logged(log, "a starts")
        second = runner.submit(runner.ticket(), Operation("b", recording(log, "b")))
        await second.finished.wait()
        assert first.superseded and first.finished.is_set()
        return log

    assert asyncio.run(main()) == ["a starts", "a cleaned up (superseded)", "b starts", "b ends"]


def test_an_operation_dropped_while_waiting_is_told_so():
    async def main() -> tuple[list[str], list[str]]:
        runner, log, dropped = LatestWins(), [], []
        runner.submit(runner.ticket(), Operation("a", recording(log, "a"), dropped=lambda: dropped.append("a")))
        last = runner.submit(runner.ticket(), Operation("b", recording(log, "b")))
        await last.finished.wait()
        return log, dropped

    log, dropped = asyncio.run(main())
    assert dropped == ["a"] and log == ["b starts", "b ends"]


def test_an_operation_cancelled_before_its_body_ran_is_told_so():
    """The regression: its task was created, then cancelled before its first
    step, so its body (which ends its caller's wait) never ran."""
    async def main() -> tuple[list[str], list[str]]:
        runner, log, dropped = LatestWins(), [], []
        runner.submit(runner.ticket(), Operation("a", recording(log, "a"), dropped=lambda: dropped.append("a")))
        await asyncio.sleep(0)  # the runner creates a's task, which has not run yet
        last = runner.submit(runner.ticket(), Operation("b", recording(log, "b")))
        await last.finished.wait()
        return log, dropped

    log, dropped = asyncio.run(main())
    assert dropped == ["a"] and log == ["b starts", "b ends"]


def test_a_request_submitted_after_a_later_arrival_is_superseded_at_once():
    async def main() -> None:
        runner = LatestWins()
        early, late = runner.ticket(), runner.ticket()
        done = runner.submit(late, Operation("late", recording([], "late")))
        with pytest.raises(Superseded):
            runner.submit(early, Operation("early", recording([], "early")))
        await done.finished.wait()

    asyncio.run(main())


def test_abandon_cancels_the_running_operation_and_says_why():
    async def main() -> list[str]:
        runner, log = LatestWins(), []
        op = runner.submit(runner.ticket(), Operation("a", recording(log, "a", asyncio.Event())))
        await until_logged(log, "a starts")
        op.abandon()
        await runner.idle()
        return log

    assert asyncio.run(main()) == ["a starts", "a cleaned up (abandoned)"]
