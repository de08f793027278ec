"""A real HTTP server on 127.0.0.1 for the web tools' tests: each path
answers with a status, headers and a body, or hangs; requests are recorded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain; charset=utf-8"})
    hang: bool = False  # accept the request, never answer


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class LoopbackServer:
    def __init__(self, routes: dict[str, Reply]) -> None:
        self.routes = routes
        self.seen: list[Seen] = []
        self.release = threading.Event()  # ends hanging replies
        self.closed_by_client = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.seen.append(Seen(self.path, dict(self.headers)))
                reply = server.routes.get(self.path.split("?")[0], Reply(404, b"not found"))
                if reply.hang:
                    self.connection.settimeout(0.05)
                    while not server.release.is_set():
                        try:
                            if self.connection.recv(1) == b"":
                                server.closed_by_client.set()
                                return
                        except TimeoutError:
                            continue
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def serve(self) -> None:
        self._httpd.serve_forever(poll_interval=0.05)

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def loopback_server(routes: dict[str, Reply]) -> Iterator[LoopbackServer]:
    server = LoopbackServer(routes)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(5)
