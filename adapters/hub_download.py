"""The byte transfer behind HfHub.download: one blob into the Hub cache, resumable across calls.

Why this is ours and not ``hf_hub_download``'s: huggingface_hub 2.4 resumes
only within one call (``http_get`` retries with a Range after a dropped
connection) and deliberately never across calls: ``_download_to_tmp_and_move``
writes to a process-unique ``blobs/<etag>.<uuid>.incomplete`` and deletes it
on any failure, an interrupt included (file_download.py, the comment citing
PR #4228). It also reports progress only once per 10 MiB chunk, and it runs
in a thread no asyncio cancellation can stop. A load of a many-gigabyte model
must stop at once when cancelled and pick up where it stopped, so this module
keeps ``blobs/<etag>.incomplete`` between calls, under huggingface_hub's own
lock for that blob, and moves it to ``blobs/<etag>`` only whole and checked.
huggingface_hub then links the blob into its snapshot without a byte fetched.

A file written partly by this module is never one huggingface_hub would
pick up half-done: it only ever reads ``blobs/<etag>`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import httpx2
from filelock import FileLock, Timeout
from huggingface_hub import get_async_session, hf_raise_for_status

from llamagate.domain.errors import SourceUnavailable

CHUNK = 1 << 20  # bytes per write and per progress report
SHA256 = re.compile(r"[0-9a-f]{64}")
LOCK_POLL_S = 0.1  # how often a lock another process holds is tried again
STALLS = 2  # tries in a row that bring no new byte before giving up
STALL_PAUSE_S = 1.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-")


@dataclass(frozen=True)
class Blob:
    """One file's content as the Hub cache stores it."""

    url: str  # the file on the Hub pinned to its commit; redirects lead to the bytes
    headers: Mapping[str, str]  # the Hub's headers, token included: httpx drops it when a redirect leaves the Hub
    etag: str  # the blob's name: the sha256 of an LFS file, the git blob sha1 of a small one
    size: int
    storage: str  # <cache>/models--OWNER--NAME
    lock: str  # huggingface_hub's lock for this blob: <cache>/.locks/models--OWNER--NAME/<etag>.lock
    what: str  # "PATH from REPO", for messages

    @property
    def path(self) -> str:
        return os.path.join(self.storage, "blobs", self.etag)

    @property
    def partial(self) -> str:
        return self.path + ".incomplete"


async def fetch(blob: Blob, progress: Callable[[int], None], *, timeout: float) -> str:
    """Make ``blobs/<etag>`` whole (resuming our partial file) and return its path.

    Cancelled, it stops at once; the partial file stays, a valid prefix.
    Raises SourceUnavailable for a body that does not match the etag (the
    partial file is then removed) and lets httpx / huggingface_hub errors
    through for the caller to translate.
    """
    async with _locked(blob.lock):
        if not os.path.exists(blob.path):  # else another revision or process already holds it
            part = await asyncio.to_thread(_Partial.resume, blob.partial, blob.size)
            await _fill(blob, part, progress, timeout)
            _seal(blob, part)
    return blob.path


@contextlib.asynccontextmanager
async def _locked(path: str) -> AsyncIterator[None]:
    """huggingface_hub's lock for the blob (the same file, flock), polled so
    that a cancellation never waits on another process's download."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = FileLock(path, mode=0o664)  # group-writable, as huggingface_hub makes it for shared caches
    while True:
        try:
            lock.acquire(timeout=0)
            break
        except Timeout:
            await asyncio.sleep(LOCK_POLL_S)
    try:
        yield
    finally:
        lock.release()


class _Partial:
    """The partial file and the sha256 of what it holds."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        self.have = 0

    @classmethod
    def resume(cls, path: str, size: int) -> _Partial:
        """What an earlier call left (blocking: it hashes that prefix)."""
        part = cls(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "ab+") as f:
            have = os.fstat(f.fileno()).st_size
            if have > size:  # longer than the file: it cannot be a prefix of it
                part.restart()
                return part
            f.seek(0)
            part.digest = hashlib.file_digest(f, "sha256")
            part.have = have
        return part

    def restart(self) -> None:
        with open(self.path, "wb"):
            pass
        self.digest = hashlib.sha256()
        self.have = 0

    def append(self, f: BinaryIO, chunk: bytes) -> None:
        f.write(chunk)
        self.digest.update(chunk)
        self.have += len(chunk)


async def _fill(blob: Blob, part: _Partial, progress: Callable[[int], None], timeout: float) -> None:
    """Append the rest of the body; a dropped connection that brought bytes is resumed at once."""
    stalls = 0
    async with get_async_session() as client:
        while part.have < blob.size:
            before, error = part.have, None
            try:
                await _stream(client, blob, part, progress, timeout)
            except httpx2.TransportError as dropped:
                error = dropped
            if part.have > before:
                stalls = 0
                continue
            stalls += 1
            if stalls > STALLS:
                if error is not None:
                    raise error
                raise SourceUnavailable(f"the Hub stopped sending {blob.what} at byte {part.have} of {blob.size}")
            await asyncio.sleep(STALL_PAUSE_S)


async def _stream(
    client: httpx2.AsyncClient, blob: Blob, part: _Partial, progress: Callable[[int], None], timeout: float
) -> None:
    """One GET of the rest, from where the partial file ends."""
    headers = {**blob.headers, **({"Range": f"bytes={part.have}-"} if part.have else {})}
    async with client.stream("GET", blob.url, headers=headers, follow_redirects=True, timeout=timeout) as response:
        hf_raise_for_status(response)
        if part.have and response.status_code != 206:
            part.restart()  # the server ignored the Range: the body is the whole file
        elif part.have and body_start(response) != part.have:
            raise SourceUnavailable(
                f"the Hub sent {blob.what} from byte {body_start(response)}, not {part.have} as asked"
            )
        with open(part.path, "ab") as f:  # noqa: ASYNC230 - on purpose, see below
            async for chunk in response.aiter_bytes(CHUNK):
                # written on the event loop (to the page cache): cancelled at any
                # await, the file holds whole chunks only, a prefix of the blob
                part.append(f, chunk)
                progress(len(chunk))


def body_start(response: httpx2.Response) -> int:
    """Where a 206 body starts in the file (Content-Range), else 0."""
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    return int(match[1]) if response.status_code == 206 and match else 0


def _seal(blob: Blob, part: _Partial) -> None:
    """Move the whole, checked partial file to the blob; remove one that is wrong."""
    digest = part.digest.hexdigest()
    if part.have != blob.size or (SHA256.fullmatch(blob.etag) and digest != blob.etag):
        os.remove(part.path)
        raise SourceUnavailable(
            f"the download of {blob.what} did not match its sha256 (got {part.have} bytes with sha256 {digest};"
            f" the Hub lists {blob.size} bytes with {blob.etag}); the partial file was removed; try again"
        )
    os.replace(part.path, blob.path)
