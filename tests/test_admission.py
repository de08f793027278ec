"""The bounded queue in front of the engine's slots (application/admission.py)."""

from __future__ import annotations

import asyncio

import pytest

from llamagate.application.admission import Admission
from llamagate.domain.errors import Aborted, Overloaded


def run(coroutine) -> None:
    asyncio.run(asyncio.wait_for(coroutine, timeout=10))


async def hold(admission: Admission, entered: list[int], n: int, release: asyncio.Event) -> None:
    async with admission.slot():
        entered.append(n)
        await release.wait()


def test_waiters_enter_in_order_of_arrival_as_slots_free_up():
    async def story() -> None:
        admission, entered, release = Admission(slots=1, queue=3), [], asyncio.Event()
        tasks = []
        for n in range(4):
            tasks.append(asyncio.create_task(hold(admission, entered, n, release)))
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert entered == [0] and admission.waiting == 3
        release.set()
        await asyncio.gather(*tasks)
        assert entered == [0, 1, 2, 3] and admission.running == 0

    run(story())


def test_a_waiter_granted_the_slot_as_it_is_cancelled_passes_it_on():
    async def story() -> None:
        admission, entered, release = Admission(slots=1, queue=2), [], asyncio.Event()
        first = asyncio.create_task(hold(admission, entered, 0, release))
        await asyncio.sleep(0)
        second = asyncio.create_task(hold(admission, entered, 1, release))
        third = asyncio.create_task(hold(admission, entered, 2, release))
        await asyncio.sleep(0.01)

        release.set()  # the slot goes to the second...
        await asyncio.sleep(0)  # (the first leaves and grants it)
        second.cancel()  # ...which is cancelled before it could run
        await asyncio.gather(first, third)

        assert second.cancelled() and entered == [0, 2] and admission.running == 0 and admission.waiting == 0

    run(story())


def test_past_the_queue_a_request_is_refused_and_closing_fails_those_waiting():
    async def story() -> None:
        admission, entered, release = Admission(slots=1, queue=1), [], asyncio.Event()
        running = asyncio.create_task(hold(admission, entered, 0, release))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(hold(admission, entered, 1, release))
        await asyncio.sleep(0)

        with pytest.raises(Overloaded) as refused:
            async with admission.slot():
                pass
        admission.close(Aborted("the model was unloaded"))

        with pytest.raises(Aborted):
            await waiting
        with pytest.raises(Aborted):
            async with admission.slot():
                pass
        release.set()
        await running
        assert refused.value.retry_after_s is not None and entered == [0]

    run(story())
