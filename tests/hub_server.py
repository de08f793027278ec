"""A local stand-in for the Hugging Face Hub, for tests (there is no internet here).

It answers the calls huggingface_hub 2.x makes, with the Hub's routes,
headers and errors (read from huggingface_hub's file_download.py, hf_api.py
and utils/_http.py, and from what the Hub answers):

- ``HEAD|GET /{repo}/resolve/{revision}/{path}``: a small (git) file answers
  200 with ``ETag`` (its git blob sha1), ``X-Repo-Commit`` and the body; an
  LFS file (``*.gguf``, or anything of 10 MiB or more) answers 302 to a
  content-addressed URL on a second origin (the "CDN"), with ``X-Linked-Etag``
  (its sha256) and ``X-Linked-Size``. The CDN origin differs from the Hub's, so
  the client drops the ``Authorization`` header there, as it does with the Hub.
- ``GET|HEAD /cdn/{sha256}`` on the CDN: the bytes, ``Range`` → 206 with
  ``Content-Range``, an unsatisfiable range → 416.
- ``GET /api/models/{repo}[/revision/{rev}]`` (model_info; ``blobs=True`` adds
  sizes and LFS sha256 to ``siblings``), ``GET /api/models/{repo}/tree/{rev}[/{path}]``
  (list_repo_tree / list_repo_files), ``POST /api/models/{repo}/paths-info/{rev}``
  (get_paths_info), ``GET /api/models/{repo}/auth-check`` (auth_check),
  ``GET /api/whoami-v2``, ``GET /api/agent-harnesses`` (asked once a process).
- Errors as the Hub sends them (``X-Error-Code`` / ``X-Error-Message``), which
  the client turns into its exceptions: unknown or private repo → 401 without a
  token / 404 with one, ``RepoNotFound``; unknown revision → 404
  ``RevisionNotFound``; missing file → 404 ``EntryNotFound`` (with
  ``X-Repo-Commit``); gated repo → metadata public, files 401 (no token) / 403
  (token without access) ``GatedRepo``; unknown token → 401 "Invalid
  credentials in Authorization header".

No Xet headers are sent, so the client downloads over plain HTTP (its
fallback path), which is what makes bytes and Range requests countable here.

Every request is recorded (``HubServer.requests``) with the bytes of file
content it carried; ``rate`` throttles bodies, ``hold`` stops one mid-way
until released (or the client hangs up), ``cut`` drops the connection after
some bytes, once, so the client's own resume (a Range request) shows.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

Content = bytes | Path

# What the Hub's default .gitattributes sends to LFS (the part that matters here).
LFS_SUFFIXES = (".gguf", ".bin", ".safetensors", ".pt", ".pth", ".onnx", ".zip", ".tar.gz")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = b"".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES)
CHUNK = 64 * 1024
EPOCH_DATE = "2025-01-01T00:00:00.000Z"


@dataclass(frozen=True)
class HubRepo:
    """One model repo at one commit: path in repo → bytes, or a file on disk served as is.

    ``gated``: listing and model_info are public, downloads need a token in
    ``tokens``. ``private``: everything needs a token in ``tokens``; anyone
    else is told the repo does not exist (as the Hub does).
    """

    files: Mapping[str, Content]
    gated: bool = False
    private: bool = False
    tokens: frozenset[str] = frozenset()


@dataclass
class HubRequest:
    """One request as the endpoint saw it; ``body_bytes`` grows while a body is being sent."""

    method: str
    target: str  # path and query, as sent
    route: str  # resolve | cdn | model_info | tree | paths_info | auth_check | whoami | agent_harnesses | unknown
    repo: str | None = None
    filename: str | None = None
    range: str | None = None  # the Range header, as sent
    authorization: str | None = None
    status: int = 0
    body_bytes: int = 0  # file content bytes written (resolve of a small file, or cdn)
    complete: bool = False  # the whole body asked for was written
    aborted: bool = False  # the client went away (or the server cut) before the end
    finished: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)  # answer over

    @property
    def carries_content(self) -> bool:
        return self.method == "GET" and self.route in ("resolve", "cdn") and self.status in (200, 206)


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


class _File:
    """A served file's identity: size, git blob sha1, LFS sha256 (hashed once, lazily)."""

    def __init__(self, name: str, content: Content) -> None:
        self.name = name
        self.content = content
        self.size = len(content) if isinstance(content, bytes) else content.stat().st_size
        self.lfs = name.endswith(LFS_SUFFIXES) or self.size >= LFS_MIN_SIZE
        self._lock = threading.Lock()
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        with self._lock:
            if self._sha256 is None:
                if isinstance(self.content, bytes):
                    self._sha256 = hashlib.sha256(self.content).hexdigest()
                else:
                    with self.content.open("rb") as f:
                        self._sha256 = hashlib.file_digest(f, "sha256").hexdigest()
            return self._sha256

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def oid(self) -> str:
        """The git blob sha1: of the pointer file for an LFS file, of the bytes otherwise."""
        data = self.pointer if self.lfs else self.read(0, self.size)
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def read(self, start: int, end: int) -> bytes:
        with self.opened() as read:
            return read(start, end - start)

    @contextmanager
    def opened(self) -> Iterator[Callable[[int, int], bytes]]:
        """read(offset, n) over the content, the file kept open meanwhile."""
        content = self.content
        if isinstance(content, bytes):
            yield lambda at, n: content[at : at + n]
            return
        with content.open("rb") as f:

            def read(at: int, n: int) -> bytes:
                f.seek(at)
                data = f.read(n)
                if len(data) != n:
                    raise OSError(f"{content} shrank while being served")
                return data

            yield read

    def entry(self) -> dict[str, object]:
        """A tree / paths-info entry, as the Hub writes it."""
        item: dict[str, object] = {"type": "file", "oid": self.oid, "size": self.size, "path": self.name}
        if self.lfs:
            item["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return item

    def sibling(self, blobs: bool) -> dict[str, object]:
        """A model_info ``siblings`` item; sizes only with ``blobs=True``."""
        if not blobs:
            return {"rfilename": self.name}
        item: dict[str, object] = {"rfilename": self.name, "blobId": self.oid, "size": self.size}
        if self.lfs:
            item["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return item


class _Repo:
    def __init__(self, repo_id: str, spec: HubRepo) -> None:
        self.id = repo_id
        self.spec = spec
        files = dict(spec.files)
        files.setdefault(".gitattributes", GITATTRIBUTES)
        self.files = {name: _File(name, content) for name, content in sorted(files.items())}
        listing = "\n".join(f"{name} {f.size}" for name, f in self.files.items())
        self.commit = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()

    def folders(self) -> set[str]:
        return {"/".join(name.split("/")[:i]) for name in self.files for i in range(1, name.count("/") + 1)}

    def folder_entry(self, path: str) -> dict[str, object]:
        tree = hashlib.sha1(f"tree {self.commit} {path}".encode()).hexdigest()
        return {"type": "directory", "oid": tree, "size": 0, "path": path}


@dataclass
class _Trigger:
    filename: str
    after: int


@dataclass
class _Controls:
    rate: int | None = None
    hold: _Trigger | None = None
    cut: _Trigger | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class HubServer:
    """The Hub on 127.0.0.1 (``endpoint``) and its CDN (``cdn``, another port).

    ``repos``: repo id ("owner/name") → HubRepo, or just its files.
    ``tokens``: user tokens the Hub knows, besides the ones repos grant.
    """

    def __init__(self, repos: Mapping[str, HubRepo | Mapping[str, Content]], *, tokens: Iterable[str] = ()) -> None:
        self.repos = {rid: _Repo(rid, r if isinstance(r, HubRepo) else HubRepo(r)) for rid, r in repos.items()}
        self.tokens = set(tokens).union(*(r.spec.tokens for r in self.repos.values()))
        self.requests: list[HubRequest] = []
        self.held = threading.Event()  # set while a body waits in hold()
        self._release = threading.Event()
        self._controls = _Controls()
        self._closing = threading.Event()
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn=False))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn=True))
        self._threads: list[threading.Thread] = []
        for httpd in (self._hub, self._cdn):
            httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._cdn.server_address[1]}"

    # -- life --------------------------------------------------------------

    def start(self) -> HubServer:
        for httpd in (self._hub, self._cdn):
            thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        self._closing.set()
        self._release.set()
        for httpd in (self._hub, self._cdn):
            httpd.shutdown()
            httpd.server_close()
        for thread in self._threads:
            thread.join(5)

    # -- what tests steer ----------------------------------------------------

    @property
    def rate(self) -> int | None:
        """Bytes per second for every body sent from now on (None: as fast as possible)."""
        return self._controls.rate

    @rate.setter
    def rate(self, value: int | None) -> None:
        if value is not None and value <= 0:
            raise ValueError(f"rate must be positive bytes/s, not {value}")
        self._controls.rate = value

    def hold(self, filename: str, after_bytes: int) -> None:
        """Once: the next body of ``filename`` (in any repo) that gets that far
        stops after ``after_bytes`` of it (a shorter one, such as a header's
        range read, passes), sets ``held`` and waits for ``release()`` or for
        the client to hang up (then the request is ``aborted``)."""
        with self._controls.lock:
            self._release.clear()
            self.held.clear()
            self._controls.hold = _Trigger(filename, after_bytes)

    def release(self) -> None:
        self._release.set()

    def cut(self, filename: str, after_bytes: int) -> None:
        """Once: the next body of ``filename`` (in any repo) that gets that far drops the connection after
        ``after_bytes``."""
        with self._controls.lock:
            self._controls.cut = _Trigger(filename, after_bytes)

    def reset(self) -> None:
        """Forget the request log and every rate, hold and cut."""
        self.release()
        with self._controls.lock:
            self._controls.rate = None
            self._controls.hold = None
            self._controls.cut = None
        self.held.clear()
        self.requests.clear()

    # -- what tests read -----------------------------------------------------

    def commit(self, repo_id: str) -> str:
        return self.repos[repo_id].commit

    def sha256(self, repo_id: str, filename: str) -> str:
        return self.repos[repo_id].files[filename].sha256

    def size(self, repo_id: str, filename: str) -> int:
        return self.repos[repo_id].files[filename].size

    def requests_for(self, repo_id: str | None = None, filename: str | None = None) -> list[HubRequest]:
        """Requests naming that repo / file (resolve, CDN, or API calls on the repo)."""
        return [
            r
            for r in list(self.requests)
            if (repo_id is None or r.repo == repo_id) and (filename is None or r.filename == filename)
        ]

    def body_requests(self, repo_id: str | None = None, filename: str | None = None) -> list[HubRequest]:
        """The GETs that sent file content (200 or 206), in order."""
        return [r for r in self.requests_for(repo_id, filename) if r.carries_content]

    def bytes_served(self, repo_id: str | None = None, filename: str | None = None) -> int:
        """File content bytes written to clients, partial bodies included."""
        return sum(r.body_bytes for r in self.body_requests(repo_id, filename))

    # -- the Hub's answers -----------------------------------------------------

    def _caller(self, authorization: str | None) -> str | None:
        """The token of a request, or None; an unknown token is an error, as on the Hub."""
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return token

    def _repo(self, repo_id: str, token: str | None) -> _Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.spec.private and token not in repo.spec.tokens):
            raise HubError(401 if token is None else 404, "RepoNotFound", "Repository not found")
        return repo

    def _at(self, repo: _Repo, revision: str) -> None:
        if unquote(revision) not in ("main", repo.commit):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}")

    def _may_download(self, repo: _Repo, token: str | None) -> None:
        if not repo.spec.gated or token in repo.spec.tokens:
            return
        if token is None:
            message = f"Access to model {repo.id} is restricted. You must have access to it and be authenticated to access it. Please log in."
            raise HubError(401, "GatedRepo", message)
        message = f"Access to model {repo.id} is restricted and you are not in the authorized list. Visit {self.endpoint}/{repo.id} to ask for access."
        raise HubError(403, "GatedRepo", message)

    def _file(self, repo: _Repo, path: str) -> _File:
        found = repo.files.get(path)
        if found is None:
            raise HubError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.commit})
        return found

    def _model_info(self, repo: _Repo, blobs: bool) -> dict[str, object]:
        owner = repo.id.split("/")[0] if "/" in repo.id else None
        return {
            "_id": repo.commit[:24],
            "id": repo.id,
            "author": owner,
            "sha": repo.commit,
            "lastModified": EPOCH_DATE,
            "createdAt": EPOCH_DATE,
            "private": repo.spec.private,
            "disabled": False,
            "gated": "manual" if repo.spec.gated else False,
            "downloads": 0,
            "likes": 0,
            "tags": ["gguf"] if any(n.endswith(".gguf") for n in repo.files) else [],
            "library_name": None,
            "siblings": [f.sibling(blobs) for f in repo.files.values()],
            "usedStorage": sum(f.size for f in repo.files.values()),
        }

    def _tree(self, repo: _Repo, path: str, recursive: bool) -> list[dict[str, object]]:
        folders = repo.folders()
        if path and path not in folders:
            raise HubError(404, "EntryNotFound", f'{path} does not exist on "main"', {"X-Repo-Commit": repo.commit})
        prefix = f"{path}/" if path else ""

        def listed(name: str) -> bool:
            return name.startswith(prefix) and (recursive or "/" not in name[len(prefix) :])

        entries = [repo.folder_entry(d) for d in sorted(folders) if listed(d)]
        return entries + [f.entry() for name, f in repo.files.items() if listed(name)]

    def _paths_info(self, repo: _Repo, paths: list[str]) -> list[dict[str, object]]:
        folders = repo.folders()
        found: list[dict[str, object]] = []
        for path in paths:
            path = path.strip("/")
            if path in repo.files:
                found.append(repo.files[path].entry())
            elif path in folders:
                found.append(repo.folder_entry(path))
        return found

    def _trigger(self, name: str, filename: str) -> _Trigger | None:
        """The one-shot trigger (hold or cut) aimed at this file, if any; a body
        that ends before its byte leaves it armed for the next."""
        with self._controls.lock:
            trigger = getattr(self._controls, name)
            return trigger if trigger is not None and trigger.filename == filename else None

    def _fire(self, name: str, trigger: _Trigger) -> bool:
        """Disarm ``trigger`` as it fires; False if another body fired it first."""
        with self._controls.lock:
            if getattr(self._controls, name) is not trigger:
                return False
            setattr(self._controls, name, None)
            return True

    def _wait_released(self, connection: socket.socket) -> bool:
        """Hold a body until release(); False when the client hung up meanwhile."""
        self.held.set()
        while not self._release.wait(0.02):
            readable, _, _ = select.select([connection], [], [], 0)
            if readable:
                try:
                    if connection.recv(1, socket.MSG_PEEK) == b"":
                        return False
                except OSError:
                    return False
        return not self._closing.is_set()


_RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_AUTH_CHECK = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/auth-check$")
_PATHS_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)/paths-info/(?P<rev>[^/]+)$")
_CDN = re.compile(r"^/cdn/(?P<sha256>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(?P<start>\d*)-(?P<end>\d*)$")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) asked by a Range header; None for the whole file.
    Raises HubError(416) when nothing of the file is in it."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None or (not match["start"] and not match["end"]):
        return None  # several ranges or a malformed one: the whole file, as CloudFront does
    if not match["start"]:  # a suffix: the last n bytes
        return max(0, size - int(match["end"])), size
    start = int(match["start"])
    end = min(size, int(match["end"]) + 1) if match["end"] else size
    if start >= size or start >= end:
        raise HubError(416, None, "Requested Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
    return start, end


def _handler(hub: HubServer, *, cdn: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real thing; every answer has a length

        def do_HEAD(self) -> None:
            self._answer("HEAD")

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, method: str) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            seen = HubRequest(
                method,
                self.path,
                "unknown",
                range=self.headers.get("Range"),
                authorization=self.headers.get("Authorization"),
            )
            hub.requests.append(seen)
            body = self._read_body()
            try:
                if cdn:
                    self._cdn(seen, method, url.path, query)
                else:
                    self._hub(seen, method, url.path, query, body)
            except HubError as error:
                self._error(seen, error)
            except OSError:  # the client hung up mid-answer
                seen.aborted = True
                self.close_connection = True
            finally:
                seen.finished.set()

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        # -- the Hub origin -----------------------------------------------------

        def _hub(self, seen: HubRequest, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
            if path == "/api/agent-harnesses" and method == "GET":
                seen.route = "agent_harnesses"  # the client's once-a-process user-agent lookup
                return self._json(seen, {"standardEnvVars": [], "harnesses": {}})
            if path == "/api/whoami-v2" and method == "GET":
                seen.route = "whoami"
                token = hub._caller(seen.authorization)
                if token is None:
                    raise HubError(401, None, "Invalid credentials in Authorization header")
                return self._json(seen, {"type": "user", "name": "llamagate-tester", "auth": {"type": "access_token"}})
            for route, pattern, methods in (
                ("resolve", _RESOLVE, ("HEAD", "GET")),
                ("tree", _TREE, ("GET",)),
                ("paths_info", _PATHS_INFO, ("POST",)),
                ("auth_check", _AUTH_CHECK, ("GET",)),
                ("model_info", _INFO, ("GET",)),
            ):
                match = pattern.match(path)
                if match is None or method not in methods:
                    continue
                seen.route, seen.repo = route, unquote(match["repo"])
                token = hub._caller(seen.authorization)
                repo = hub._repo(seen.repo, token)
                hub._at(repo, match.groupdict().get("rev") or "main")
                if route == "resolve":
                    seen.filename = unquote(match["path"])
                    hub._may_download(repo, token)
                    return self._resolve(seen, method, repo, hub._file(repo, seen.filename))
                if route == "tree":
                    recursive = query.get("recursive", ["False"])[0].lower() == "true"
                    return self._json(seen, hub._tree(repo, unquote(match["path"] or "").strip("/"), recursive))
                if route == "auth_check":
                    hub._may_download(repo, token)
                    return self._json(seen, {})
                if route == "paths_info":
                    form = parse_qs(body.decode())
                    return self._json(seen, hub._paths_info(repo, form.get("paths", [])))
                blobs = query.get("blobs", ["False"])[0].lower() == "true"
                return self._json(seen, hub._model_info(repo, blobs))
            raise HubError(404, None, f"Not found: {method} {path}")

        def _resolve(self, seen: HubRequest, method: str, repo: _Repo, f: _File) -> None:
            common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
            if f.lfs:
                where = f"{hub.cdn}/cdn/{f.sha256}?repo={quote(repo.id, safe='')}&file={quote(f.name, safe='')}"
                text = f"Found. Redirecting to {where}".encode()
                headers = {
                    **common,
                    "Location": where,
                    "ETag": f'"{f.oid}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "Content-Type": "text/plain; charset=utf-8",
                }
                seen.status = 302
                self._head(302, headers, len(text))
                if method == "GET":
                    self.wfile.write(text)
                seen.complete = True
                return
            self._content(seen, method, f, {**common, "ETag": f'"{f.oid}"'})

        # -- the CDN origin ------------------------------------------------------

        def _cdn(self, seen: HubRequest, method: str, path: str, query: dict[str, list[str]]) -> None:
            seen.route = "cdn"
            seen.repo = query.get("repo", [None])[0]
            seen.filename = query.get("file", [None])[0]
            match = _CDN.match(path)
            repo = hub.repos.get(seen.repo or "")
            f = repo.files.get(seen.filename or "") if repo else None
            if match is None or method not in ("GET", "HEAD") or f is None or f.sha256 != match["sha256"]:
                raise HubError(404, None, "NoSuchKey")
            self._content(seen, method, f, {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"})

        # -- bodies ----------------------------------------------------------------

        def _content(self, seen: HubRequest, method: str, f: _File, headers: dict[str, str]) -> None:
            span = _byte_range(seen.range, f.size)
            start, end = span or (0, f.size)
            headers = {
                **headers,
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f"inline; filename*=UTF-8''{quote(f.name.split('/')[-1])}",
                "Last-Modified": formatdate(0, usegmt=True),
            }
            if span is not None:
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
            seen.status = 206 if span is not None else 200
            self._head(seen.status, headers, end - start)
            if method == "HEAD":
                seen.complete = True
                return
            self._stream(seen, f, start, end)

        def _stream(self, seen: HubRequest, f: _File, start: int, end: int) -> None:
            hold = hub._trigger("hold", f.name)
            cut = hub._trigger("cut", f.name)
            with f.opened() as read:
                while seen.body_bytes < end - start:
                    if hold is not None and seen.body_bytes >= hold.after:
                        fired, hold = hub._fire("hold", hold), None
                        if fired and not hub._wait_released(self.connection):
                            seen.aborted = True
                            self.close_connection = True
                            return
                    if cut is not None and seen.body_bytes >= cut.after and hub._fire("cut", cut):
                        seen.aborted = True
                        self.close_connection = True
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    rate = hub.rate  # read per piece: a test may change it mid-body
                    piece = min(CHUNK if rate is None else max(1024, rate // 20), end - start - seen.body_bytes)
                    # a piece ends at a trigger's byte, so the trigger fires exactly there
                    stops = [t.after - seen.body_bytes for t in (hold, cut) if t is not None]
                    piece = min([piece, *(s for s in stops if s > 0)])
                    self.wfile.write(read(start + seen.body_bytes, piece))
                    seen.body_bytes += piece
                    if rate is not None:
                        time.sleep(piece / rate)
            seen.complete = True

        # -- plumbing --------------------------------------------------------------

        def _head(self, status: int, headers: Mapping[str, str], length: int) -> None:
            self.send_response(status)
            self.send_header("X-Request-Id", f"Root=llamagate-{len(hub.requests)}")
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def _json(self, seen: HubRequest, data: object) -> None:
            text = json.dumps(data).encode()
            seen.status = 200
            self._head(200, {"Content-Type": "application/json; charset=utf-8"}, len(text))
            self.wfile.write(text)
            seen.complete = True

        def _error(self, seen: HubRequest, error: HubError) -> None:
            seen.status = error.status
            text = json.dumps({"error": error.message}).encode()
            headers = {"Content-Type": "application/json; charset=utf-8", **error.headers}
            if error.code is not None:
                headers["X-Error-Code"] = error.code
            headers["X-Error-Message"] = error.message
            self._head(error.status, headers, len(text))
            if seen.method != "HEAD":
                self.wfile.write(text)
            seen.complete = True

    return Handler


@contextmanager
def hub_server(
    repos: Mapping[str, HubRepo | Mapping[str, Content]], *, tokens: Iterable[str] = ()
) -> Iterator[HubServer]:
    server = HubServer(repos, tokens=tokens).start()
    try:
        yield server
    finally:
        server.close()


# -- The repos the tests serve, made from the real SmolLM2 -------------------------

OWNER = "llamagate-test"
SMOLLM2_Q4_1 = "SmolLM2-135M-Instruct-Q4_1.gguf"
SMOLLM2_Q8_0 = "SmolLM2-135M-Instruct-Q8_0.gguf"
SINGLE_REPO = f"{OWNER}/SmolLM2-135M-Instruct-single-GGUF"  # SMOLLM2_Q4_1 alone
VARIANTS_REPO = f"{OWNER}/SmolLM2-135M-Instruct-GGUF"  # Q4_1 and a bigger Q8_0, both real
SPLIT_REPO = f"{OWNER}/SmolLM2-135M-Instruct-split-GGUF"  # Q4_1 in 3 shards, in a folder
SPLIT_SHARDS = tuple(f"Q4_1/SmolLM2-135M-Instruct-Q4_1-{i:05d}-of-00003.gguf" for i in (1, 2, 3))
VISION_REPO = f"{OWNER}/SmolLM2-135M-Instruct-vision-GGUF"  # Q4_1 and a tiny projector pair
PROJECTOR_F16 = "mmproj-SmolLM2-135M-Instruct-f16.gguf"
PROJECTOR_BF16 = "mmproj-SmolLM2-135M-Instruct-bf16.gguf"
TINY_REPO = f"{OWNER}/Tiny-GGUF"  # tiny synthetic files, one per variant name
TINY_VARIANTS = ("Q4_K_M", "UD-Q4_K_XL", "Q8_0", "F16", "BF16")  # in increasing size
GATED_REPO = f"{OWNER}/SmolLM2-135M-Instruct-gated-GGUF"  # SMOLLM2_Q4_1, gated
PRIVATE_REPO = f"{OWNER}/SmolLM2-135M-Instruct-private-GGUF"  # SMOLLM2_Q4_1, private
NO_GGUF_REPO = f"{OWNER}/no-gguf"  # safetensors and a README, no GGUF
ACCESS_TOKEN = "hf_llamagate_test_access"  # may read GATED_REPO and PRIVATE_REPO
OTHER_TOKEN = "hf_llamagate_test_no_access"  # a valid user token without that access
README = b"---\nlibrary_name: gguf\n---\n# Test repo served by tests/hub_server.py\n"


# GGUF value types and the sizes of the fixed-size ones (ggml's gguf.h).
_GGUF_STRING, _GGUF_ARRAY, _GGUF_U32 = 8, 9, 4
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_Q8_0, _FTYPE_Q8_0 = 8, 7  # ggml_type GGML_TYPE_Q8_0, llama_ftype LLAMA_FTYPE_MOSTLY_Q8_0


@dataclass(frozen=True)
class _Tensor:
    name: str
    dims: tuple[int, ...]
    kind: int  # ggml_type
    offset: int  # from the start of the data section
    nbytes: int


def _gguf_layout(data: bytes | mmap.mmap) -> tuple[dict[str, bytes], list[_Tensor], int]:
    """The key/values (key → raw encoded entry), tensors and data offset of a GGUF v3.

    Walks the bytes rather than using gguf.GGUFReader, which builds an object per
    vocabulary string and takes seconds on SmolLM2."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    assert bytes(data[:4]) == b"GGUF", "not a GGUF file"
    (n_tensors, n_kv), at = struct.unpack_from("<QQ", data, 8), 24

    def string(at: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", data, at)
        return bytes(data[at + 8 : at + 8 + n]).decode(), at + 8 + n

    def skip(kind: int, at: int) -> int:
        if kind == _GGUF_STRING:
            return string(at)[1]
        if kind != _GGUF_ARRAY:
            return at + _GGUF_SIZES[kind]
        item, count = struct.unpack_from("<IQ", data, at)
        at += 12
        if item in _GGUF_SIZES:
            return at + count * _GGUF_SIZES[item]
        for _ in range(count):
            at = skip(item, at)
        return at

    kvs: dict[str, bytes] = {}
    for _ in range(n_kv):
        key, value_at = string(at)
        (kind,) = struct.unpack_from("<I", data, value_at)
        end = skip(kind, value_at + 4)
        kvs[key], at = bytes(data[at:end]), end
    alignment = (
        struct.unpack_from("<I", kvs["general.alignment"], len(kvs["general.alignment"]) - 4)[0]
        if "general.alignment" in kvs
        else 32
    )
    tensors = []
    for _ in range(n_tensors):
        name, at = string(at)
        (n_dims,) = struct.unpack_from("<I", data, at)
        dims = struct.unpack_from(f"<{n_dims}Q", data, at + 4)
        kind, offset = struct.unpack_from("<IQ", data, at + 4 + 8 * n_dims)
        at += 4 + 8 * n_dims + 12
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        count = 1
        for d in dims:
            count *= d
        tensors.append(_Tensor(name, tuple(dims), kind, offset, count // block * size))
    return kvs, tensors, -(-at // alignment) * alignment


def _kv(key: str, kind: int, value: bytes) -> bytes:
    return struct.pack("<Q", len(key.encode())) + key.encode() + struct.pack("<I", kind) + value


def _write_gguf(dest: Path, kvs: Iterable[bytes], tensors: list[tuple[_Tensor, bytes]]) -> None:
    """A GGUF v3 (alignment 32) from raw key/value entries and (tensor, its bytes)."""
    kvs = list(kvs)
    infos, offset = [], 0
    for t, data in tensors:
        name = t.name.encode()
        infos.append(
            struct.pack("<Q", len(name))
            + name
            + struct.pack(f"<I{len(t.dims)}Q", len(t.dims), *t.dims)
            + struct.pack("<IQ", t.kind, offset)
        )
        offset += -(-len(data) // 32) * 32
    with dest.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(infos))
        f.write(b"\0" * (-f.tell() % 32))
        for _, data in tensors:
            f.write(data)
            f.write(b"\0" * (-len(data) % 32))


def rewrite_gguf(source: Path, dest: Path, *, shards: int = 1, q8_0: bool = False) -> list[Path]:
    """Copy a GGUF, split into ``shards`` files as llama-gguf-split does
    (``-00001-of-00003.gguf``, every key in the first, ``split.*`` keys in all)
    and/or requantized to Q8_0. Returns the files written, first shard first."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    with source.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        kvs, tensors, start = _gguf_layout(data)
        kvs.pop("general.alignment", None)
        if q8_0:
            kvs["general.file_type"] = _kv("general.file_type", _GGUF_U32, struct.pack("<I", _FTYPE_Q8_0))
        contents = []
        for t in tensors:
            raw = data[start + t.offset : start + t.offset + t.nbytes]
            kind = GGMLQuantizationType(t.kind)
            if q8_0 and kind in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q6_K):
                rows = np.frombuffer(raw, np.uint8).reshape(-1, quants.quant_shape_to_byte_shape((t.dims[0],), kind)[0])
                raw = quants.quantize(quants.dequantize(rows, kind), GGMLQuantizationType.Q8_0).tobytes()
                t = _Tensor(t.name, t.dims, _Q8_0, 0, len(raw))
            contents.append((t, raw))
    if shards == 1:
        _write_gguf(dest, kvs.values(), contents)
        return [dest]
    per_shard = -(-len(contents) // shards)
    files = []
    for i in range(shards):
        split = [
            _kv("split.no", 2, struct.pack("<H", i)),
            _kv("split.count", 2, struct.pack("<H", shards)),
            _kv("split.tensors.count", 5, struct.pack("<i", len(contents))),
        ]
        shard = dest.with_name(f"{dest.stem}-{i + 1:05d}-of-{shards:05d}.gguf")
        _write_gguf(shard, [*(kvs.values() if i == 0 else ()), *split], contents[i * per_shard : (i + 1) * per_shard])
        files.append(shard)
    return files


def write_tiny_gguf(path: Path, variant: str, values: int) -> Path:
    """A valid, tiny, non-loadable GGUF named for a variant: one F32 tensor of ``values``."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, "llama")
    writer.add_name(f"Tiny {variant}")
    writer.add_tensor("token_embd.weight", np.zeros((values,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def smollm2_hub_repos(model: Path, workdir: Path, projector: Callable[[Path, int], Path]) -> dict[str, HubRepo]:
    """Every repo above; what is built goes to ``workdir`` (a few seconds, once).

    ``projector(path, seed)`` writes a tiny vision projector (tests/projector.py).
    """
    split = workdir / "split"
    split.mkdir(parents=True, exist_ok=True)
    shards = rewrite_gguf(model, split / "SmolLM2-135M-Instruct-Q4_1.gguf", shards=3)
    assert [s.name for s in shards] == [Path(s).name for s in SPLIT_SHARDS], shards
    q8_0 = rewrite_gguf(model, workdir / SMOLLM2_Q8_0, q8_0=True)[0]
    tiny = {
        f"Tiny-{v}.gguf": write_tiny_gguf(workdir / f"Tiny-{v}.gguf", v, 256 * (i + 1))
        for i, v in enumerate(TINY_VARIANTS)
    }
    access = frozenset({ACCESS_TOKEN})
    return {
        SINGLE_REPO: HubRepo({SMOLLM2_Q4_1: model, "README.md": README}),
        VARIANTS_REPO: HubRepo({SMOLLM2_Q4_1: model, SMOLLM2_Q8_0: q8_0, "README.md": README}),
        SPLIT_REPO: HubRepo({**dict(zip(SPLIT_SHARDS, shards)), "README.md": README}),
        VISION_REPO: HubRepo(
            {
                SMOLLM2_Q4_1: model,
                PROJECTOR_F16: projector(workdir / PROJECTOR_F16, 0),
                PROJECTOR_BF16: projector(workdir / PROJECTOR_BF16, 1),
                "README.md": README,
            }
        ),
        TINY_REPO: HubRepo({**tiny, "README.md": README}),
        GATED_REPO: HubRepo({SMOLLM2_Q4_1: model, "README.md": README}, gated=True, tokens=access),
        PRIVATE_REPO: HubRepo({SMOLLM2_Q4_1: model, "README.md": README}, private=True, tokens=access),
        NO_GGUF_REPO: HubRepo({"model.safetensors": b"\0" * 64, "config.json": b"{}", "README.md": README}),
    }


# -- What tests compare against -------------------------------------------------------


def sha256(path: Path | str) -> str:
    """The sha256 of a file on disk (what the Hub lists for an LFS file)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content(hub: HubServer, repo: str, filename: str, size: int | None = None) -> bytes:
    """The bytes ``hub`` serves for a file (its first ``size`` of them)."""
    f = hub.repos[repo].files[filename]
    return f.read(0, f.size if size is None else size)
