"""The ``fetch_url`` tool: a web page's text, for the model to read (SPEC §14).

Where it may connect is decided after DNS resolution, on every hop: the name
is resolved once, every address it has must be public (``address_policy``),
and the connection goes to the checked address with the name kept for the
Host header, TLS SNI and certificate check. A second resolution, where DNS
could answer differently (rebinding), never happens. Redirects are followed
here, each one checked the same way. Proxies from the environment are not
used: a proxy would resolve names itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import httpx

from llamagate.adapters.tools.address_policy import Address, refusal
from llamagate.adapters.tools.html_text import html_to_text
from llamagate.adapters.tools.output import truncate_text
from llamagate.domain.chat import Tool
from llamagate.domain.tools import ToolResult

# host, port -> the addresses it resolves to, as text
Resolver = Callable[[str, int], Awaitable[list[str]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HTML = ("text/html", "application/xhtml+xml")
_TEXT = ("text/", "application/json", "application/xml", "application/javascript", "application/ld+json",
         "application/rss+xml", "application/atom+xml")
_HEADERS = {
    "User-Agent": "Mozilla/5.0 (compatible; llamagate fetch_url)",
    "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5",
}


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _Refused(Exception):
    """A failure to report as the tool's result (its text already says what failed)."""


@dataclass(frozen=True)
class _Page:
    url: str
    text: str
    cut: bool  # the body was longer than the byte limit


class FetchUrlTool:
    def __init__(self, *, allow_private: bool = False, resolve: Resolver = system_resolve,
                 transport: httpx.AsyncBaseTransport | None = None, max_bytes: int = 2 << 20,
                 output_chars: int = 16 * 1024, max_redirects: int = 5) -> None:
        self._allow_private = allow_private
        self._resolve = resolve
        self._transport = transport  # tests: httpx.MockTransport
        self._max_bytes = max_bytes
        self._output_chars = output_chars
        self._max_redirects = max_redirects

    @property
    def definition(self) -> Tool:
        return Tool(
            "fetch_url",
            "Read a web page (http or https): returns its text, without markup.",
            json.dumps({"type": "object", "properties": {"url": {"type": "string", "description": "The page's URL."}},
                        "required": ["url"]}),
        )

    async def run(self, arguments: Mapping[str, object], *, timeout_s: float) -> ToolResult:
        url = arguments.get("url")
        if not isinstance(url, str) or not url.strip():
            return ToolResult('Error: fetch_url needs "url", the page to read, as a string', failed=True)
        url = url.strip()
        try:
            async with asyncio.timeout(timeout_s if math.isfinite(timeout_s) else None):
                page = await self._fetch(url)
        except TimeoutError:
            return ToolResult(f"Failed to fetch {url}: no answer within {timeout_s:g} s", failed=True)
        except _Refused as e:
            return ToolResult(str(e), failed=True)
        except httpx.HTTPError as e:
            return ToolResult(f"Failed to fetch {url}: {_describe(e)}", failed=True)
        note = f"\n[the page is longer than {self._max_bytes} bytes; only its start was read]" if page.cut else ""
        return ToolResult(truncate_text(f"{page.url}\n\n{page.text or '(no text)'}{note}", self._output_chars))

    async def _fetch(self, url: str) -> _Page:
        async with httpx.AsyncClient(transport=self._transport, trust_env=False, follow_redirects=False) as client:
            for _ in range(self._max_redirects + 1):
                target = _parse(url)
                address = await self._address_for(target.raw_host.decode("ascii"), target.port or _port(target))
                request = client.build_request(
                    "GET", target.copy_with(host=str(address)), headers={**_HEADERS, "Host": _host_header(target)},
                    extensions={"sni_hostname": target.raw_host.decode("ascii")} if target.scheme == "https" else {},
                )
                response = await client.send(request, stream=True)
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        url = str(target.join(response.headers["location"]))
                        continue
                    return await self._page(url, response)
                finally:
                    await response.aclose()
        raise _Refused(f"Failed to fetch {url}: more than {self._max_redirects} redirects")

    async def _address_for(self, host: str, port: int) -> Address:
        """The address to connect to: ``host``'s, if every address it has may be reached."""
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = [ipaddress.ip_address(a) for a in await self._resolve(host, port)]
            except (OSError, ValueError) as e:
                raise _Refused(f"Failed to resolve {host}: {getattr(e, 'strerror', None) or e}") from e
            if not addresses:
                raise _Refused(f"Failed to resolve {host}: no addresses") from None
        if not self._allow_private:
            for address in addresses:
                if reason := refusal(address):
                    shown = host if host == str(address) else f"{host} ({address})"
                    raise _Refused(f"Failed to fetch: {shown} is {reason}; fetch_url only reads public addresses")
        return addresses[0]

    async def _page(self, url: str, response: httpx.Response) -> _Page:
        if not 200 <= response.status_code < 300:
            raise _Refused(f"Failed to fetch {url}: HTTP {response.status_code} {response.reason_phrase}".rstrip())
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and not kind.startswith(_TEXT + _HTML):
            raise _Refused(f"Failed to fetch {url}: it is {kind}, not text")
        body, cut = bytearray(), False
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self._max_bytes:
                del body[self._max_bytes:]
                cut = True
                break
        text = _decode(bytes(body), response.encoding)
        return _Page(url, html_to_text(text) if kind.startswith(_HTML) or not kind and "<html" in text[:1000].lower()
                     else text.strip(), cut)


def _parse(url: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as e:
        raise _Refused(f"Failed to fetch {url}: not a valid URL ({e})") from e
    if target.scheme not in ("http", "https") or not target.raw_host:
        raise _Refused(f"Failed to fetch {url}: only http:// and https:// URLs with a host can be fetched")
    return target


def _port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def _host_header(url: httpx.URL) -> str:
    host = url.raw_host.decode("ascii")
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{url.port}" if url.port is not None else host


def _decode(body: bytes, encoding: str | None) -> str:
    try:
        return body.decode(encoding or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", "replace")


def _describe(error: httpx.HTTPError) -> str:
    said = str(error) or type(error).__name__
    return said if isinstance(error, httpx.HTTPStatusError) else f"{type(error).__name__}: {said}"
