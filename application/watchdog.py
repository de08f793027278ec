"""Notice an engine that stopped answering (SIGSTOP, a deadlock) while its process lives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Watchdog:
    interval_s: float = 1.0  # between probes that were answered
    silent_after_s: float = 3.0  # no answer for this long: the engine is frozen

    async def watch(self, probe: Callable[[float], Awaitable[bool]]) -> float:
        """Probe until nothing answered for ``silent_after_s``; return how long
        it was silent. ``probe(timeout)`` says whether an answer came in time."""
        loop = asyncio.get_running_loop()
        last_answer = loop.time()
        while True:
            left = self.silent_after_s - (loop.time() - last_answer)
            if left <= 0:
                return loop.time() - last_answer
            if await probe(left):
                last_answer = loop.time()
                await asyncio.sleep(self.interval_s)
            else:  # refused at once (restarting listener): try again soon, until the time is up
                await asyncio.sleep(min(self.interval_s / 4, max(self.silent_after_s - (loop.time() - last_answer), 0)))
