"""Run a slot's operations one at a time, the latest request winning.

Loads and unloads of one slot must never overlap (two children, or a stop
racing a spawn), and a later request must win over an earlier one. Each
request takes a ticket when it arrives; when it is ready to act it submits an
``Operation``. The runner cancels the operation in progress (marked
``superseded``), drops one still waiting, and starts the new one only once the
previous has finished its own clean-up. An operation whose caller went away
is cancelled too, marked ``abandoned``, so its body can tell the two apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from llamagate.domain.errors import Superseded

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Operation:
    name: str
    body: Callable[[Operation], Coroutine[Any, Any, None]]
    dropped: Callable[[], None] = lambda: None  # called when the body never ran (must be idempotent)
    superseded: bool = False
    abandoned: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def abandon(self) -> None:
        """Its caller went away: cancel it (a no-op once it has finished)."""
        self.abandoned = True
        if self._task is not None and not self._task.done():
            self._task.cancel()


class LatestWins:
    def __init__(self) -> None:
        self._tickets = 0
        self._accepted = 0
        self._current: Operation | None = None
        self._next: Operation | None = None
        self._worker: asyncio.Task[None] | None = None

    def ticket(self) -> int:
        """Taken when a request arrives: the order of arrival decides who wins."""
        self._tickets += 1
        return self._tickets

    def submit(self, ticket: int, op: Operation) -> Operation:
        """Run ``op`` after what runs now, which is cancelled. Raises Superseded if
        a request that arrived later was submitted first."""
        if ticket < self._accepted:
            raise Superseded(f"{op.name} was superseded by a later LoadModel or UnloadModel")
        self._accepted = ticket
        if self._next is not None:
            self._next.superseded = True
            self._next.dropped()
            self._next.finished.set()
        self._next = op
        if self._current is not None:
            self._current.superseded = True
            if self._current._task is not None:
                self._current._task.cancel()
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="slot-operations")
        return op

    def submit_background(self, op: Operation) -> bool:
        """Run ``op`` only if nothing runs or waits; any later request cancels
        it, and it never makes a request that arrived earlier fail. Returns
        whether it was accepted."""
        if self._current is not None or self._next is not None:
            return False
        self.submit(self._accepted, op)
        return True

    async def idle(self) -> None:
        """Return once nothing runs or waits to run."""
        while (worker := self._worker) is not None:
            await asyncio.wait({worker})

    async def _work(self) -> None:
        try:
            while (op := self._next) is not None:
                self._next, self._current = None, op
                op._task = asyncio.create_task(op.body(op), name=op.name)
                await asyncio.wait({op._task})
                if op._task.cancelled():  # cancelled before its body ran: it never got to say so
                    op.dropped()
                elif (error := op._task.exception()) is not None:
                    log.error("%s failed unexpectedly", op.name, exc_info=error)
                self._current = None
                op.finished.set()
        finally:
            self._worker = None
