"""Running one story of the fake world: a test's async body against fakes, within a bound."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

W = TypeVar("W")


def play(world: W, story: Callable[[W], Awaitable[None]], close: Callable[[W], Awaitable[Any]]) -> None:
    """Run ``story(world)`` (10 s at most), then ``close(world)``; no fake child may outlive it."""

    async def main() -> None:
        try:
            await asyncio.wait_for(story(world), timeout=10)
        finally:
            await close(world)
            assert world.launcher.alive() == [], "a fake child outlived the test"  # type: ignore[attr-defined]

    asyncio.run(main())
