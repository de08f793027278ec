"""A bounded queue in front of the engine's slots (issue 8).

At most ``slots`` generations run at once (llama-server's ``--parallel``:
sending more only queues them inside llama-server, where nobody can see or
bound them); up to ``queue`` more wait here, first come first served; past
that a request is refused at once with a hint of when to retry. A waiting
request that is cancelled (its client left, its deadline passed) gives up its
place; one granted a slot as it was cancelled hands it to the next.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from llamagate.domain.admission import blend_duration, retry_after_s
from llamagate.domain.errors import LlamagateError, Overloaded

QueueListener = Callable[[int, int, int], None]  # (waiting, running, slots), after every change


class Admission:
    def __init__(self, slots: int, queue: int, on_change: QueueListener | None = None) -> None:
        self.slots = max(slots, 1)
        self.queue = max(queue, 0)
        self._free = self.slots
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._mean_s = 0.0  # running mean of how long a slot is held
        self._closed: LlamagateError | None = None
        self._on_change = on_change
        self._changed()

    @property
    def running(self) -> int:
        return self.slots - self._free

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body; raises Overloaded when the queue is full."""
        await self._acquire()
        started = time.monotonic()
        try:
            yield
        finally:
            self._mean_s = blend_duration(self._mean_s, time.monotonic() - started)
            self._release()

    def close(self, error: LlamagateError) -> None:
        """The engine behind these slots is gone: every waiter fails with ``error``."""
        self._closed = error
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(type(error)(*error.args))
        self._changed()

    async def _acquire(self) -> None:
        if self._closed is not None:
            raise type(self._closed)(*self._closed.args)
        if self._free > 0 and not self._waiting:
            self._free -= 1
            self._changed()
            return
        if len(self._waiting) >= self.queue:
            hint = retry_after_s(self._mean_s, len(self._waiting), self.slots)
            raise Overloaded(
                f"all {self.slots} slot(s) are busy and {len(self._waiting)} request(s) are waiting, the most the "
                f"queue holds (LLAMAGATE_QUEUE_SIZE): retry in about {hint:.1f} s or send it to another replica",
                retry_after_s=hint,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._changed()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release()  # granted as we were cancelled: pass the slot on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
                self._changed()
            raise

    def _release(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the first waiter
                self._changed()
                return
        self._free += 1
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.waiting, self.running, self.slots)
