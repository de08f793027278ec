"""SearXNG's JSON API as a search backend: ``GET {base}/search?q=...&format=json``.

The instance must allow the json format (``search.formats`` in its
settings.yml); it answers 403 otherwise, which is said so.
"""

from __future__ import annotations

import httpx

from llamagate.adapters.tools.search_backend import SearchFailed, SearchHit

_TIMEOUT_S = 30.0  # the tool's own timeout is usually shorter and wins


class SearxngBackend:
    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"the SearXNG URL must be an http(s) URL with a host, not {base_url!r}")
        self._search_url = url.join(url.path.rstrip("/") + "/search")
        self._transport = transport

    async def search(self, query: str, *, limit: int) -> list[SearchHit]:
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=_TIMEOUT_S) as client:
                response = await client.get(self._search_url, params={"q": query, "format": "json"},
                                            headers={"Accept": "application/json"})
        except httpx.HTTPError as e:
            raise SearchFailed(f"SearXNG at {self._search_url} could not be reached ({type(e).__name__}: {e})") from e
        if response.status_code == 403:
            raise SearchFailed("SearXNG refused the JSON format (HTTP 403): allow it in its settings.yml, "
                               "search.formats: [html, json]")
        if response.status_code != 200:
            raise SearchFailed(f"SearXNG answered HTTP {response.status_code} {response.reason_phrase}".rstrip())
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError) as e:
            raise SearchFailed(f"SearXNG's reply was not its JSON results ({type(e).__name__}: {e})") from e
        if not isinstance(results, list):
            raise SearchFailed(f"SearXNG's results were not a list but {type(results).__name__}")
        hits = [_hit(r) for r in results if isinstance(r, dict) and isinstance(r.get("url"), str)]
        return hits[:limit]


def _hit(result: dict[str, object]) -> SearchHit:
    def text(key: str) -> str:
        value = result.get(key)
        return value.strip() if isinstance(value, str) else ""

    return SearchHit(text("title") or text("url"), text("url"), text("content"))
