"""fetch_url (issue 10): public addresses only, checked after DNS resolution
and on every redirect, connecting to the very address that was checked.

There is no internet here: refusals are tested with a recording transport
(which shows that no request left), the pinning with a resolver that
changes its answer, and the reading of pages against a real server on
127.0.0.1 with private addresses allowed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loopback_http import Reply, loopback_server

from llamagate.adapters.tools.address_policy import refusal
from llamagate.adapters.tools.fetch_url import FetchUrlTool
from llamagate.adapters.tools.html_text import html_to_text

PUBLIC = "93.184.216.34"


def run(coroutine):
    return asyncio.run(coroutine)


class Recorder:
    """A transport that answers from a table keyed by the address connected to, recording every request."""

    def __init__(self, replies: dict[str, httpx.Response] | None = None) -> None:
        self.replies = replies or {}
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        hello = httpx.Response(200, text="hello", headers={"Content-Type": "text/plain"})
        return self.replies.get(request.url.host, hello)


def table_resolver(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def fetch(url: str, **options) -> tuple[str, bool]:
    result = run(FetchUrlTool(**options).run({"url": url}, timeout_s=10))
    return result.text, result.failed


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/",
    "http://127.0.0.1:8080/admin",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://[::1]/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[64:ff9b::a00:1]/",  # NAT64 carrying 10.0.0.1
    "https://[::]/",
])
def test_a_private_address_is_refused_before_any_request(url):
    recorder = Recorder()
    text, failed = fetch(url, transport=recorder.transport)
    assert failed and text.startswith("Failed to fetch") and "only reads public addresses" in text
    assert recorder.requests == []


def test_a_name_that_resolves_to_loopback_is_refused():
    recorder = Recorder()
    text, failed = fetch("http://localhost:9/", transport=recorder.transport)  # the system's resolver
    assert failed and "localhost (" in text and "loopback" in text
    assert recorder.requests == []


def test_a_name_with_one_private_address_among_public_ones_is_refused():
    recorder = Recorder()
    resolve = table_resolver({"mixed.example": [PUBLIC, "10.1.2.3"]})
    text, failed = fetch("http://mixed.example/", resolve=resolve, transport=recorder.transport)
    assert failed and "10.1.2.3" in text and recorder.requests == []


def test_an_unresolvable_name_is_a_failed_resolution():
    text, failed = fetch("http://nowhere.invalid/", resolve=table_resolver({}), transport=Recorder().transport)
    assert failed and text.startswith("Failed to resolve nowhere.invalid")


@pytest.mark.parametrize("target", [
    "http://127.0.0.1/",
    "http://10.0.0.1/secret",
    "http://169.254.169.254/latest/meta-data/iam/",
    "http://localhost/",
    "http://rebound.example:8080/",
    "//internal.example/relative-to-the-scheme",
])
def test_a_redirect_to_a_private_address_is_refused(target):
    redirect = httpx.Response(302, headers={"Location": target})
    recorder = Recorder({PUBLIC: redirect})
    resolve = table_resolver({"public.example": [PUBLIC], "localhost": ["127.0.0.1"],
                              "rebound.example": ["127.0.0.1"], "internal.example": ["10.9.9.9"]})
    text, failed = fetch("http://public.example/start", resolve=resolve, transport=recorder.transport)
    assert failed and "only reads public addresses" in text
    assert [str(r.url) for r in recorder.requests] == [f"http://{PUBLIC}/start"]  # the redirect was never followed


def test_it_connects_to_the_address_it_checked_with_the_name_in_the_host_header():
    # DNS rebinding: a second lookup would answer 127.0.0.1; there is none
    answers = iter([[PUBLIC], ["127.0.0.1"]])
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    recorder = Recorder()
    text, failed = fetch("http://rebind.example/page?q=1", resolve=rebinding, transport=recorder.transport)
    assert not failed and "hello" in text
    assert calls == ["rebind.example"]
    (request,) = recorder.requests
    assert (request.url.host, request.url.path, request.headers["Host"]) == (PUBLIC, "/page", "rebind.example")


def test_https_keeps_the_name_for_sni_and_the_certificate():
    recorder = Recorder()
    resolve = table_resolver({"secure.example": [PUBLIC]})
    fetch("https://secure.example:8443/", resolve=resolve, transport=recorder.transport)
    (request,) = recorder.requests
    assert request.url.host == PUBLIC and request.headers["Host"] == "secure.example:8443"
    assert request.extensions["sni_hostname"] == "secure.example"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/", "gopher://x/", "http:///nohost"])
def test_only_http_and_https_urls_are_fetched(url):
    recorder = Recorder()
    text, failed = fetch(url, transport=recorder.transport)
    assert failed and text.startswith("Failed to fetch") and recorder.requests == []


def test_missing_url_is_an_error_result():
    result = run(FetchUrlTool().run({}, timeout_s=5))
    assert result.failed and result.text.startswith("Error:")


PAGE = b"""<!doctype html><html><head><title>The Page</title><style>p {color: red}</style>
<script>var secret = "do not show";</script></head>
<body><h1>Heading</h1><p>First &amp; only paragraph.</p><ul><li>one</li><li>two</li></ul></body></html>"""


def test_a_page_on_loopback_is_read_as_text_when_private_addresses_are_allowed():
    routes = {"/old": Reply(301, headers={"Location": "/page"}),
              "/page": Reply(200, PAGE, {"Content-Type": "text/html; charset=utf-8"})}
    with loopback_server(routes) as server:
        text, failed = fetch(f"{server.base}/old", allow_private=True)
    assert not failed
    assert text.startswith(f"{server.base}/page\n")
    assert "The Page" in text and "Heading" in text and "First & only paragraph." in text
    assert "do not show" not in text and "color: red" not in text and "<" not in text
    assert server.seen[0].headers["Host"] == f"127.0.0.1:{server.port}"


def test_the_same_loopback_server_is_refused_by_default():
    with loopback_server({"/": Reply(200, b"hi")}) as server:
        text, failed = fetch(f"{server.base}/")
        assert failed and "loopback" in text and server.seen == []


def test_an_http_error_is_a_failed_fetch():
    with loopback_server({}) as server:
        text, failed = fetch(f"{server.base}/missing", allow_private=True)
    assert failed and text.startswith("Failed to fetch") and "HTTP 404" in text


def test_binary_content_is_not_returned():
    with loopback_server({"/x.png": Reply(200, b"\x89PNG....", {"Content-Type": "image/png"})}) as server:
        text, failed = fetch(f"{server.base}/x.png", allow_private=True)
    assert failed and "image/png" in text


def test_a_large_page_is_cut_and_the_output_truncated():
    body = b"x" * 50_000 + b"END"
    with loopback_server({"/big": Reply(200, body)}) as server:
        text, failed = fetch(f"{server.base}/big", allow_private=True, max_bytes=20_000, output_chars=4000)
    assert not failed and "only its start was read" in text and "output truncated" in text
    assert len(text) < 4100 and "END" not in text


def test_a_redirect_loop_ends_after_five_hops():
    with loopback_server({"/a": Reply(302, headers={"Location": "/b"}),
                          "/b": Reply(302, headers={"Location": "/a"})}) as server:
        text, failed = fetch(f"{server.base}/a", allow_private=True)
        assert failed and "more than 5 redirects" in text and len(server.seen) == 6


def test_a_server_that_never_answers_times_out():
    with loopback_server({"/slow": Reply(hang=True)}) as server:
        result = run(FetchUrlTool(allow_private=True).run({"url": f"{server.base}/slow"}, timeout_s=0.5))
    assert result.failed and result.text.startswith("Failed to fetch") and "within 0.5 s" in result.text


def test_cancelling_closes_the_connection():
    with loopback_server({"/slow": Reply(hang=True)}) as server:
        async def main():
            call = asyncio.create_task(FetchUrlTool(allow_private=True).run({"url": f"{server.base}/slow"},
                                                                            timeout_s=600))
            while not server.seen:
                await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

        run(main())
        assert server.closed_by_client.wait(5)


def test_html_text_drops_markup_scripts_and_styles():
    text = html_to_text("<html><head><title>T</title><script>x()</script></head><body>"
                        "<p>a&nbsp;b</p><div>c<br>d</div><noscript>no</noscript></body></html>")
    assert text == "T\n\na b\n\nc\nd"


@given(st.integers(0, 2**32 - 1))
def test_an_ipv4_address_carried_in_ipv6_is_judged_as_itself(number):
    v4 = ipaddress.IPv4Address(number)
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    nat64 = ipaddress.IPv6Address((0x64FF9B << 96) | number)
    assert bool(refusal(v4)) == bool(refusal(mapped)) == bool(refusal(nat64))


@given(st.sampled_from(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
                        "100.64.0.0/10", "224.0.0.0/4", "0.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128", "ff00::/8"]),
       st.integers(0, 2**128 - 1))
def test_every_address_in_a_non_public_network_is_refused(network, offset):
    net = ipaddress.ip_network(network)
    address = net.network_address + (offset % net.num_addresses)
    assert refusal(address)


def test_public_addresses_pass():
    for text in (PUBLIC, "1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"):
        assert refusal(ipaddress.ip_address(text)) == ""
