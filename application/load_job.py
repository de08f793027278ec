"""What one LoadModel call sees of the operation that serves it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llamagate.domain.errors import LlamagateError, Superseded
from llamagate.domain.model_info import LoadEvent


class LoadJob:
    """Events flow from the slot's operation to the caller through a queue, so
    the operation never waits for a slow reader; ``end`` closes the stream with
    success or an error (the first end wins)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[LoadEvent | LlamagateError | None] = asyncio.Queue()
        self.ended = False

    def emit(self, event: LoadEvent) -> None:
        if not self.ended:
            self._queue.put_nowait(event)

    def end(self, error: LlamagateError | None = None) -> None:
        if not self.ended:
            self.ended = True
            self._queue.put_nowait(error)

    def superseded(self) -> None:
        self.end(Superseded("the load was superseded by a later LoadModel or UnloadModel"))

    async def events(self) -> AsyncIterator[LoadEvent]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, LlamagateError):
                raise item
            yield item
