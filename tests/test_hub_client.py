"""HfHub (adapters/hub_client.py) through the real huggingface_hub against the
local Hub (tests/hub_server.py): listings and their errors, range reads,
downloads that keep huggingface_hub's cache layout and resume across calls,
offline listings; and DiskSpace."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx2
import pytest
from fakes import FakeHub
from hub_server import (
    ACCESS_TOKEN,
    GATED_REPO,
    NO_GGUF_REPO,
    OTHER_TOKEN,
    PRIVATE_REPO,
    SINGLE_REPO,
    SMOLLM2_Q4_1,
    SPLIT_REPO,
    SPLIT_SHARDS,
    TINY_REPO,
    TINY_VARIANTS,
    content,
    sha256,
)
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.utils import WeakFileLock

from llamagate.adapters.disk_space import DiskSpace
from llamagate.adapters.hub_client import HfHub
from llamagate.domain.errors import ModelNotFound, NotCached, PermissionDenied, SourceUnavailable
from llamagate.domain.hub import HubFile, HubListing, HubSource

T = TypeVar("T")
MIB = 1 << 20
SHARD = SPLIT_SHARDS[2]  # ~22 MB, in a folder: big enough to stop a download half-way


def tiny(variant: str) -> str:
    return f"Tiny-{variant}.gguf"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def make(hub, hf_cache, **options) -> HfHub:
    return HfHub(endpoint=hub.endpoint, cache_dir=str(hf_cache), **options)


def file_of(listing: HubListing, path: str) -> HubFile:
    return next(f for f in listing.files if f.path == path)


def partial_of(hf_cache: Path, repo: str, sha: str) -> Path:
    return hf_cache / f"models--{repo.replace('/', '--')}" / "blobs" / f"{sha}.incomplete"


async def download(hf: HfHub, source: HubSource, path: str, listing: HubListing | None = None) -> tuple[str, list[int]]:
    listing = listing or hf.listing(source)
    heard: list[int] = []
    local = await hf.download(source, listing, file_of(listing, path), heard.append)
    return local, heard


# -- listings -------------------------------------------------------------------------------


def test_a_listing_has_the_hubs_commit_sizes_and_sha256(hub, hf_cache):
    listing = make(hub, hf_cache).listing(HubSource(SPLIT_REPO))
    assert listing.repo == SPLIT_REPO and listing.commit == hub.commit(SPLIT_REPO)
    served = hub.repos[SPLIT_REPO].files
    assert {f.path for f in listing.files} == set(served)
    for f in listing.files:
        assert f.size == hub.size(SPLIT_REPO, f.path)
        assert f.sha256 == (hub.sha256(SPLIT_REPO, f.path) if served[f.path].lfs else "")
    assert file_of(listing, SHARD).sha256  # every GGUF is an LFS file


def test_a_revision_may_be_the_commit(hub, hf_cache):
    commit = hub.commit(SINGLE_REPO)
    assert make(hub, hf_cache).listing(HubSource(SINGLE_REPO, revision=commit)).commit == commit


@pytest.mark.parametrize(
    ("repo", "revision", "token", "error", "says"),
    [
        ("llamagate-test/no-such-repo", "", "", ModelNotFound, "no repository llamagate-test/no-such-repo"),
        (SINGLE_REPO, "no-such-branch", "", ModelNotFound, "no revision 'no-such-branch'"),
        (PRIVATE_REPO, "", "", ModelNotFound, "private repository looks the same"),
        (PRIVATE_REPO, "", OTHER_TOKEN, ModelNotFound, "private repository looks the same"),
        (SINGLE_REPO, "", "hf_bad", PermissionDenied, "refused the token"),
    ],
)
def test_listing_errors_are_the_domains(hub, hf_cache, repo, revision, token, error, says):
    with pytest.raises(error, match=says) as raised:
        make(hub, hf_cache).listing(HubSource(repo, revision=revision, token=token))
    assert not token or token not in str(raised.value)


def test_a_private_repo_lists_with_a_token_that_may_read_it(hub, hf_cache):
    by_source = make(hub, hf_cache).listing(HubSource(PRIVATE_REPO, token=ACCESS_TOKEN))
    by_hub = make(hub, hf_cache, token=ACCESS_TOKEN).listing(HubSource(PRIVATE_REPO))
    assert by_source == by_hub and SMOLLM2_Q4_1 in {f.path for f in by_hub.files}
    assert {r.authorization for r in hub.requests_for(PRIVATE_REPO)} == {f"Bearer {ACCESS_TOKEN}"}


@pytest.mark.parametrize("token", ["", OTHER_TOKEN])
def test_a_gated_repo_lists_but_its_bytes_need_access(hub, hf_cache, token):
    hf = make(hub, hf_cache)
    source = HubSource(GATED_REPO, token=token)
    listing = hf.listing(source)  # the Hub shows a gated repo's files to anyone
    with pytest.raises(PermissionDenied, match="gated") as raised:
        hf.read_range(source, listing, SMOLLM2_Q4_1, 0, 16)
    assert "accepted its conditions" in str(raised.value) and (not token or token not in str(raised.value))
    with pytest.raises(PermissionDenied, match="gated"):
        run(download(hf, source, SMOLLM2_Q4_1, listing))
    assert hub.bytes_served() == 0
    allowed = HubSource(GATED_REPO, token=ACCESS_TOKEN)
    assert hf.read_range(allowed, listing, SMOLLM2_Q4_1, 0, 4) == b"GGUF"


def test_an_endpoint_that_is_down_is_source_unavailable(hf_cache):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: connections are refused
        hf = HfHub(endpoint=endpoint, cache_dir=str(hf_cache))
        with pytest.raises(SourceUnavailable, match=f"could not reach the Hub \\({endpoint}\\)"):
            hf.listing(HubSource(SINGLE_REPO))
        listing = HubListing(SINGLE_REPO, "0" * 40, (HubFile(SMOLLM2_Q4_1, 100, "a" * 64),))
        with pytest.raises(SourceUnavailable, match=endpoint):
            hf.read_range(HubSource(SINGLE_REPO), listing, SMOLLM2_Q4_1, 0, 10)
        with pytest.raises(SourceUnavailable, match=endpoint):
            run(hf.download(HubSource(SINGLE_REPO), listing, listing.files[0], lambda n: None))


# -- range reads -------------------------------------------------------------------------------


def test_a_range_read_is_one_range_request_for_exactly_those_bytes(hub, hf_cache):
    hf = make(hub, hf_cache)
    source = HubSource(SINGLE_REPO)
    listing = hf.listing(source)
    assert hf.read_range(source, listing, SMOLLM2_Q4_1, 100, 5000) == content(hub, SINGLE_REPO, SMOLLM2_Q4_1)[100:5000]
    (body,) = hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1)
    assert (body.status, body.range, body.body_bytes) == (206, "bytes=100-4999", 4900)
    assert body.authorization is None  # the token stays on the Hub, off its CDN


def test_a_range_read_is_clipped_at_the_files_end(hub, hf_cache):
    hf = make(hub, hf_cache)
    source = HubSource(TINY_REPO)
    listing = hf.listing(source)
    name = tiny("F16")
    whole, size = content(hub, TINY_REPO, name), hub.size(TINY_REPO, name)
    assert hf.read_range(source, listing, name, size - 10, size + 100) == whole[-10:]
    hub.reset()
    assert hf.read_range(source, listing, name, size, size + 100) == b""
    assert hub.requests == []  # the listing knew there was nothing to read
    unlisted = HubListing(TINY_REPO, listing.commit, ())
    assert hf.read_range(source, unlisted, name, size + 5, size + 100) == b""  # the Hub's 416
    assert hf.read_range(source, unlisted, name, 3, size + 100) == whole[3:]
    with pytest.raises(ValueError, match="not a byte range"):
        hf.read_range(source, listing, name, 10, 5)


def test_a_range_read_from_a_server_that_ignores_range_stops_reading_at_the_end(tmp_path, monkeypatch):
    data = bytes(range(256)) * 4096
    asked: list[str | None] = []
    pulled: list[int] = []

    def body() -> Iterator[bytes]:
        for at in range(0, len(data), 1000):
            pulled.append(at)
            yield data[at : at + 1000]

    def whole_file(request: httpx2.Request) -> httpx2.Response:
        asked.append(request.headers.get("Range"))
        return httpx2.Response(200, content=body())

    client = httpx2.Client(transport=httpx2.MockTransport(whole_file))
    monkeypatch.setattr("llamagate.adapters.hub_client.get_session", lambda: client)
    hf = HfHub(endpoint="http://hub.invalid", cache_dir=str(tmp_path), offline=False)
    listing = HubListing("owner/name", "0" * 40, (HubFile("model.gguf", len(data), ""),))
    assert hf.read_range(HubSource("owner/name"), listing, "model.gguf", 5000, 7000) == data[5000:7000]
    assert asked == ["bytes=5000-6999"] and len(pulled) == 7  # the body up to byte 7000, no further


def test_a_missing_file_is_model_not_found(hub, hf_cache):
    hf = make(hub, hf_cache)
    source = HubSource(TINY_REPO)
    listing = hf.listing(source)
    with pytest.raises(ModelNotFound, match="no file Tiny-Q2_K.gguf"):
        hf.read_range(source, listing, "Tiny-Q2_K.gguf", 0, 10)


# -- downloads -------------------------------------------------------------------------------


def test_a_download_lands_in_huggingface_hubs_own_cache_layout(hub, hf_cache):
    hf = make(hub, hf_cache)
    source, name = HubSource(TINY_REPO), tiny("Q8_0")
    listing = hf.listing(source)
    path, heard = run(download(hf, source, name, listing))
    assert sha256(path) == hub.sha256(TINY_REPO, name) and sum(heard) == hub.size(TINY_REPO, name)
    (body,) = hub.body_requests(TINY_REPO, name)
    assert (body.route, body.range, body.complete) == ("cdn", None, True)
    assert Path(path).is_relative_to(hf_cache) and hf.local_path(listing, name) == path
    # huggingface_hub finds it, at the commit and through refs/main, and fetches no body again
    assert try_to_load_from_cache(TINY_REPO, name, cache_dir=hf_cache, revision=listing.commit) == path
    assert try_to_load_from_cache(TINY_REPO, name, cache_dir=hf_cache) == path
    hub.reset()
    assert hf_hub_download(TINY_REPO, name, cache_dir=hf_cache) == path
    assert run(download(hf, source, name, listing)) == (path, [])
    assert hub.bytes_served() == 0


def test_a_small_git_file_downloads_from_the_hub_itself(hub, hf_cache):
    hf = make(hub, hf_cache)
    path, heard = run(download(hf, HubSource(NO_GGUF_REPO), "config.json"))
    assert Path(path).read_bytes() == b"{}" and heard == [2]


def test_a_cancelled_download_leaves_a_prefix_that_the_next_one_resumes(hub, hf_cache):
    hf = make(hub, hf_cache)
    source = HubSource(SPLIT_REPO)
    listing = hf.listing(source)
    whole, size, sha = content(hub, SPLIT_REPO, SHARD), hub.size(SPLIT_REPO, SHARD), hub.sha256(SPLIT_REPO, SHARD)
    hub.hold(SHARD, 3 * MIB + 12345)  # the body stops there until the client hangs up
    heard: list[int] = []

    async def cancel_mid_body() -> None:
        task = asyncio.create_task(hf.download(source, listing, file_of(listing, SHARD), heard.append))
        while sum(heard) < 3 * MIB:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_mid_body())
    (first,) = hub.body_requests(SPLIT_REPO, SHARD)
    assert first.finished.wait(10) and first.aborted and not first.complete  # the request was hung up
    kept = partial_of(hf_cache, SPLIT_REPO, sha).read_bytes()
    assert len(kept) == sum(heard) == 3 * MIB and kept == whole[: len(kept)]  # whole chunks only, all reported
    assert hf.cached_bytes(listing) == {SHARD: len(kept)}

    hub.reset()
    path, more = run(download(hf, source, SHARD, listing))
    assert sha256(path) == sha and sum(more) == size - len(kept)
    (resumed,) = hub.body_requests(SPLIT_REPO, SHARD)
    assert (resumed.status, resumed.range, resumed.body_bytes) == (206, f"bytes={len(kept)}-", size - len(kept))
    assert hub.bytes_served() < size and not partial_of(hf_cache, SPLIT_REPO, sha).exists()


def test_a_dropped_connection_is_resumed_within_the_call(hub, hf_cache):
    hf = make(hub, hf_cache)
    size = hub.size(SPLIT_REPO, SHARD)
    hub.cut(SHARD, 5 * MIB + 100)
    path, heard = run(download(hf, HubSource(SPLIT_REPO), SHARD))
    assert sha256(path) == hub.sha256(SPLIT_REPO, SHARD) and sum(heard) == size
    first, resumed = hub.body_requests(SPLIT_REPO, SHARD)
    assert first.aborted and resumed.range == f"bytes={5 * MIB}-" and resumed.body_bytes == size - 5 * MIB


def test_a_corrupt_partial_file_is_removed_and_the_next_download_succeeds(hub, hf_cache):
    hf = make(hub, hf_cache)
    source, name = HubSource(TINY_REPO), tiny("BF16")
    listing = hf.listing(source)
    partial = partial_of(hf_cache, TINY_REPO, hub.sha256(TINY_REPO, name))
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"not the file's first bytes")
    with pytest.raises(SourceUnavailable, match="did not match its sha256.*partial file was removed"):
        run(download(hf, source, name, listing))
    assert not partial.exists() and hf.local_path(listing, name) is None
    (body,) = hub.body_requests(TINY_REPO, name)
    assert body.range == "bytes=26-"  # it resumed after the 26 bytes it found
    hub.reset()
    path, heard = run(download(hf, source, name, listing))
    assert sha256(path) == hub.sha256(TINY_REPO, name) and sum(heard) == hub.size(TINY_REPO, name)


def test_a_resume_the_server_answers_with_the_whole_file_starts_the_file_again(hub, hf_cache, monkeypatch):
    hf = make(hub, hf_cache)
    source, name = HubSource(TINY_REPO), tiny("F16")
    listing = hf.listing(source)
    data = content(hub, TINY_REPO, name)
    asked: list[str | None] = []

    async def whole_file(request: httpx2.Request) -> httpx2.Response:
        asked.append(request.headers.get("Range"))
        return httpx2.Response(200, content=data)

    monkeypatch.setattr("llamagate.adapters.hub_download.get_async_session",
                        lambda: httpx2.AsyncClient(transport=httpx2.MockTransport(whole_file)))
    partial = partial_of(hf_cache, TINY_REPO, hub.sha256(TINY_REPO, name))
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:100])
    path, heard = run(download(hf, source, name, listing))
    assert asked == ["bytes=100-"] and sha256(path) == hub.sha256(TINY_REPO, name)
    assert sum(heard) == len(data)  # every byte written counts: the restart fetched the file again


def test_a_blob_another_revision_holds_is_linked_without_a_body(hub, hf_cache):
    hf = make(hub, hf_cache)
    source, name = HubSource(TINY_REPO), tiny("Q4_K_M")
    listing = hf.listing(source)
    blob = partial_of(hf_cache, TINY_REPO, hub.sha256(TINY_REPO, name)).with_suffix("")
    blob.parent.mkdir(parents=True)
    blob.write_bytes(content(hub, TINY_REPO, name))
    assert hf.cached_bytes(listing) == {name: hub.size(TINY_REPO, name)}
    path, heard = run(download(hf, source, name, listing))
    assert heard == [] and hub.bytes_served() == 0 and os.path.realpath(path) == str(blob)


def test_a_download_waits_for_huggingface_hubs_lock_on_the_blob_and_can_be_cancelled_meanwhile(hub, hf_cache):
    hf = make(hub, hf_cache)
    source, name = HubSource(TINY_REPO), tiny("F16")
    listing = hf.listing(source)
    lock = hf_cache / ".locks" / f"models--{TINY_REPO.replace('/', '--')}" / f"{hub.sha256(TINY_REPO, name)}.lock"
    lock.parent.mkdir(parents=True)

    async def while_locked(then_cancel: bool) -> tuple[str, list[int]] | None:
        with WeakFileLock(lock):  # as hf_hub_download holds it while it fetches that blob
            task = asyncio.create_task(download(hf, source, name, listing))
            while not hub.requests_for(TINY_REPO, name):  # its HEAD for the etag
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # time enough to start a body if it did not wait
            assert hub.body_requests() == []
            if then_cancel:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                return None
        return await task

    assert run(while_locked(then_cancel=True)) is None
    path, heard = run(while_locked(then_cancel=False))
    assert sha256(path) == hub.sha256(TINY_REPO, name) and sum(heard) == hub.size(TINY_REPO, name)
    assert len(hub.body_requests()) == 1


def test_cached_bytes_counts_whole_files_and_resumable_parts_of_ggufs_only(hub, hf_cache):
    hf = make(hub, hf_cache)
    source = HubSource(TINY_REPO)
    listing = hf.listing(source)
    assert hf.cached_bytes(listing) == {}
    whole, part = tiny(TINY_VARIANTS[0]), tiny(TINY_VARIANTS[1])
    run(download(hf, source, whole, listing))
    run(download(hf, source, "README.md", listing))
    partial = partial_of(hf_cache, TINY_REPO, hub.sha256(TINY_REPO, part))
    partial.write_bytes(content(hub, TINY_REPO, part)[:100])
    assert hf.cached_bytes(listing) == {whole: hub.size(TINY_REPO, whole), part: 100}


# -- offline -------------------------------------------------------------------------------


def test_offline_a_listing_is_what_the_cache_holds(hub, hf_cache, hf_offline):
    online = make(hub, hf_cache)
    source = HubSource(SPLIT_REPO)
    listing = online.listing(source)
    shard, _ = run(download(online, source, SHARD, listing))
    readme, _ = run(download(online, source, "README.md", listing))
    hf_offline()
    hub.reset()
    hf = make(hub, hf_cache)
    assert hf.offline and not online.offline
    cached = hf.listing(source)
    assert cached == HubListing(SPLIT_REPO, listing.commit, (file_of(listing, SHARD), file_of(listing, "README.md")))
    assert hf.listing(HubSource(SPLIT_REPO, revision=listing.commit[:10])) == cached
    assert hf.cached_bytes(cached) == {SHARD: hub.size(SPLIT_REPO, SHARD)}
    assert run(download(hf, source, SHARD, cached)) == (shard, [])
    with pytest.raises(NotCached, match="is not in the local Hub cache"):
        run(download(hf, source, SPLIT_SHARDS[0], listing))
    with pytest.raises(NotCached, match="is not in the local Hub cache"):
        hf.read_range(source, listing, SPLIT_SHARDS[0], 0, 4)
    with pytest.raises(NotCached, match=r"revision v2\) is not in the local Hub cache"):
        hf.listing(HubSource(SPLIT_REPO, revision="v2"))
    assert hub.requests == [] and Path(readme).read_bytes() == content(hub, SPLIT_REPO, "README.md")


def test_offline_an_uncached_repo_is_not_cached(hub, hf_cache, hf_offline):
    hf_offline()
    with pytest.raises(NotCached, match=f"{TINY_REPO} \\(revision main\\) is not in the local Hub cache"):
        make(hub, hf_cache).listing(HubSource(TINY_REPO))
    with pytest.raises(NotCached, match="is not in the local Hub cache"):
        HfHub(endpoint=hub.endpoint, cache_dir=str(hf_cache / "never-made")).listing(HubSource(TINY_REPO))
    assert hub.requests == []


# -- disk space -------------------------------------------------------------------------------


def test_free_bytes_of_a_directory_not_made_yet_is_asked_of_its_nearest_existing_parent(tmp_path, monkeypatch):
    assert DiskSpace().free_bytes(str(tmp_path / "not" / "yet" / "made")) > 0
    asked: list[str] = []

    def disk_usage(path: str) -> SimpleNamespace:
        asked.append(path)
        return SimpleNamespace(total=1000, used=400, free=600)

    monkeypatch.setattr("llamagate.adapters.disk_space.shutil.disk_usage", disk_usage)
    assert DiskSpace().free_bytes(str(tmp_path / "not" / "yet" / "made")) == 600
    assert DiskSpace().free_bytes(str(tmp_path) + "/") == 600
    assert asked == [str(tmp_path), str(tmp_path)]


# -- the fake (tests/fakes.py) answers as HfHub does ------------------------------------------


@pytest.fixture(params=["HfHub", "FakeHub"])
def either_hub(request, hub, hf_cache) -> HfHub | FakeHub:
    if request.param == "HfHub":
        return make(hub, hf_cache)
    tiny_files = {name: content(hub, TINY_REPO, name) for name in hub.repos[TINY_REPO].files}
    gated_head = hub.repos[GATED_REPO].files[SMOLLM2_Q4_1].read(0, 64)  # what the test reads of it
    return FakeHub({TINY_REPO: tiny_files, GATED_REPO: {SMOLLM2_Q4_1: gated_head}}, gated=[GATED_REPO],
                   access_token=ACCESS_TOKEN)


def test_the_fake_hub_lists_and_refuses_as_hfhub_does(hub, hf_cache, either_hub):
    listing = either_hub.listing(HubSource(TINY_REPO))
    assert listing.files == make(hub, hf_cache).listing(HubSource(TINY_REPO)).files
    with pytest.raises(ModelNotFound, match="no repository"):
        either_hub.listing(HubSource("llamagate-test/no-such-repo"))
    with pytest.raises(ModelNotFound, match="no revision"):
        either_hub.listing(HubSource(TINY_REPO, revision="no-such-branch"))
    with pytest.raises(ModelNotFound, match="no file"):
        either_hub.read_range(HubSource(TINY_REPO), listing, "Tiny-Q2_K.gguf", 0, 4)
    gated = either_hub.listing(HubSource(GATED_REPO))
    with pytest.raises(PermissionDenied, match="gated"):
        either_hub.read_range(HubSource(GATED_REPO), gated, SMOLLM2_Q4_1, 0, 4)
    assert either_hub.read_range(HubSource(GATED_REPO, token=ACCESS_TOKEN), gated, SMOLLM2_Q4_1, 0, 4) == b"GGUF"


def test_the_fake_hub_keeps_a_cancelled_downloads_part_for_the_next(hub):
    name = tiny("F16")
    data = content(hub, TINY_REPO, name)
    fake = FakeHub({TINY_REPO: {name: data}})
    fake.hold = asyncio.Event()
    source = HubSource(TINY_REPO)
    listing = fake.listing(source)
    heard: list[int] = []

    async def cancel_mid_body() -> None:
        task = asyncio.create_task(fake.download(source, listing, listing.files[0], heard.append))
        while not heard:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_mid_body())
    assert fake.cancelled == 1 and fake.cached_bytes(listing) == {name: sum(heard)} and fake.local_path(listing, name) is None
    fake.hold.set()
    path = run(fake.download(source, listing, listing.files[0], heard.append))
    assert sum(heard) == len(data) and fake.local_path(listing, name) == path
    assert fake.downloads == [(TINY_REPO, name, 0), (TINY_REPO, name, len(data) // 2)]
    fake.offline = True
    assert fake.listing(source) == listing
    with pytest.raises(NotCached):
        fake.listing(HubSource(GATED_REPO))
