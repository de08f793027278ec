"""The ``web_search`` tool: a query in, a short numbered list of hits out
(SPEC §14). Reading a page is ``fetch_url``'s job."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence

from llamagate.adapters.tools.output import truncate_text
from llamagate.adapters.tools.search_backend import SearchBackend, SearchFailed, SearchHit
from llamagate.domain.chat import Tool
from llamagate.domain.tools import ToolResult

_SNIPPET_CHARS = 300


class WebSearchTool:
    def __init__(self, backend: SearchBackend, *, max_results: int = 8, output_chars: int = 16 * 1024) -> None:
        self._backend = backend
        self._max_results = max_results
        self._output_chars = output_chars

    @property
    def definition(self) -> Tool:
        return Tool(
            "web_search",
            "Search the web. Returns the top results: title, URL and a snippet each. "
            "Use fetch_url to read a result in full.",
            json.dumps({"type": "object", "required": ["query"],
                        "properties": {"query": {"type": "string", "description": "What to search for."}}}),
        )

    async def run(self, arguments: Mapping[str, object], *, timeout_s: float) -> ToolResult:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            return ToolResult("No query provided", failed=True)
        query = query.strip()
        try:
            async with asyncio.timeout(timeout_s if math.isfinite(timeout_s) else None):
                hits = await self._backend.search(query, limit=self._max_results)
        except TimeoutError:
            return ToolResult(f"Search failed: no answer within {timeout_s:g} s", failed=True)
        except SearchFailed as e:
            return ToolResult(f"Search failed: {e}", failed=True)
        return ToolResult(truncate_text(format_hits(query, hits), self._output_chars))


def format_hits(query: str, hits: Sequence[SearchHit]) -> str:
    if not hits:
        return f"No results for: {query}"
    lines = [f"Results for: {query}"]
    for number, hit in enumerate(hits, 1):
        lines.append(f"\n{number}. {hit.title}\n   {hit.url}")
        if hit.snippet:
            snippet = " ".join(hit.snippet.split())
            lines.append(f"   {snippet[:_SNIPPET_CHARS]}{'…' if len(snippet) > _SNIPPET_CHARS else ''}")
    return "\n".join(lines)
