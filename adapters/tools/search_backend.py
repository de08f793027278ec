"""The port ``web_search`` searches through, and what it finds.

An adapter-side port: only the web_search tool uses it (the agent loop sees
tools, never search engines). SearXNG's JSON API is the shipped backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SearchHit:
    title: str
    url: str
    snippet: str = ""


class SearchFailed(Exception):
    """The backend could not answer: unreachable, an HTTP error, a reply it could not read."""


class SearchBackend(Protocol):
    async def search(self, query: str, *, limit: int) -> list[SearchHit]:
        """At most ``limit`` hits, best first. Raises SearchFailed."""
        ...
