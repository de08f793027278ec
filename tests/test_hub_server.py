"""The local Hub (tests/hub_server.py) answers the real huggingface_hub client
as the Hub does: listings, sizes, downloads through the cache, Range reads and
resumes, the errors the client turns into its exceptions, offline mode."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from hub_server import (
    ACCESS_TOKEN,
    GATED_REPO,
    NO_GGUF_REPO,
    OTHER_TOKEN,
    PRIVATE_REPO,
    PROJECTOR_BF16,
    PROJECTOR_F16,
    SINGLE_REPO,
    SMOLLM2_Q4_1,
    SMOLLM2_Q8_0,
    SPLIT_REPO,
    SPLIT_SHARDS,
    TINY_REPO,
    TINY_VARIANTS,
    VARIANTS_REPO,
    VISION_REPO,
    HubError,
    _byte_range,
    _gguf_layout,
    content,
    sha256,
)
from huggingface_hub import HfApi, HfFileSystem, get_hf_file_metadata, get_session, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils.tqdm import tqdm as hf_tqdm
from hypothesis import given
from hypothesis import strategies as st

# -- listing and metadata ------------------------------------------------------------


def test_list_repo_files_lists_every_shard_in_its_folder(hub, hf_cache):
    files = HfApi().list_repo_files(SPLIT_REPO)
    assert sorted(files) == sorted([".gitattributes", "README.md", *SPLIT_SHARDS])
    assert [r.route for r in hub.requests_for(SPLIT_REPO)] == ["tree"]


def test_list_repo_tree_without_recursion_shows_the_folder(hub, hf_cache):
    top = {(type(e).__name__, e.path) for e in HfApi().list_repo_tree(SPLIT_REPO)}
    assert ("RepoFolder", "Q4_1") in top and not any(path.startswith("Q4_1/") for _, path in top)
    inside = [e.path for e in HfApi().list_repo_tree(SPLIT_REPO, path_in_repo="Q4_1")]
    assert inside == list(SPLIT_SHARDS)


def test_model_info_with_files_metadata_has_every_size_and_sha256(hub, hf_cache, hub_repos):
    info = HfApi().model_info(VARIANTS_REPO, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    for name in (SMOLLM2_Q4_1, SMOLLM2_Q8_0):
        path = hub_repos[VARIANTS_REPO].files[name]
        assert siblings[name].size == path.stat().st_size
        assert siblings[name].lfs.sha256 == sha256(path)
    assert siblings[SMOLLM2_Q8_0].size > siblings[SMOLLM2_Q4_1].size
    assert info.sha == hub.commit(VARIANTS_REPO)
    assert HfApi().model_info(VARIANTS_REPO).siblings[0].size is None  # sizes only when asked


def test_get_paths_info_answers_files_and_folders_and_skips_the_missing(hub, hf_cache):
    found = HfApi().get_paths_info(SPLIT_REPO, [SPLIT_SHARDS[1], "Q4_1", "nope.gguf"])
    assert [(type(e).__name__, e.path) for e in found] == [("RepoFile", SPLIT_SHARDS[1]), ("RepoFolder", "Q4_1")]
    assert found[0].size == hub.size(SPLIT_REPO, SPLIT_SHARDS[1])
    assert found[0].lfs.sha256 == hub.sha256(SPLIT_REPO, SPLIT_SHARDS[1])


def test_file_metadata_is_the_hubs_lfs_redirect_and_git_etag(hub, hf_cache):
    lfs = get_hf_file_metadata(hf_hub_url(SINGLE_REPO, SMOLLM2_Q4_1))
    assert (lfs.etag, lfs.size, lfs.commit_hash) == (
        hub.sha256(SINGLE_REPO, SMOLLM2_Q4_1),
        hub.size(SINGLE_REPO, SMOLLM2_Q4_1),
        hub.commit(SINGLE_REPO),
    )
    assert lfs.location.startswith(hub.cdn + "/cdn/")
    readme = content(hub, SINGLE_REPO, "README.md")
    small = get_hf_file_metadata(hf_hub_url(SINGLE_REPO, "README.md"))
    assert small.etag == hashlib.sha1(b"blob %d\0" % len(readme) + readme).hexdigest()
    assert small.size == len(readme) and small.location.startswith(hub.endpoint)
    assert {r.method for r in hub.requests_for(SINGLE_REPO)} == {"HEAD"}


# -- downloads -----------------------------------------------------------------------------


def test_download_fills_the_cache_and_the_second_call_fetches_no_body(hub, hf_cache):
    path = hf_hub_download(GATED_REPO, SMOLLM2_Q4_1, token=ACCESS_TOKEN)
    assert Path(path).is_relative_to(hf_cache) and sha256(path) == hub.sha256(GATED_REPO, SMOLLM2_Q4_1)
    head, body = hub.requests_for(GATED_REPO)
    assert (head.method, head.route, head.status, head.authorization) == (
        "HEAD",
        "resolve",
        302,
        f"Bearer {ACCESS_TOKEN}",
    )
    assert (body.route, body.status, body.range) == ("cdn", 200, None)
    assert body.authorization is None  # the client keeps the token off the CDN, as with the real Hub
    assert hub.bytes_served() == hub.size(GATED_REPO, SMOLLM2_Q4_1)

    hub.reset()
    assert hf_hub_download(GATED_REPO, SMOLLM2_Q4_1, token=ACCESS_TOKEN) == path
    assert [(r.method, r.route) for r in hub.requests_for(GATED_REPO)] == [("HEAD", "resolve")]
    assert hub.bytes_served() == 0


def test_small_file_is_served_by_the_hub_itself(hub, hf_cache):
    path = hf_hub_download(NO_GGUF_REPO, "config.json")
    assert Path(path).read_bytes() == b"{}"
    assert [(r.method, r.route, r.status) for r in hub.requests_for(NO_GGUF_REPO)] == [
        ("HEAD", "resolve", 200),
        ("GET", "resolve", 200),
    ]


def test_range_reads_through_the_client_fetch_only_what_is_asked(hub, hf_cache):
    fs = HfFileSystem(endpoint=hub.endpoint)
    with fs.open(f"{SINGLE_REPO}/{SMOLLM2_Q4_1}", "rb", block_size=4096) as f:
        f.seek(100)
        head = f.read(1000)
    assert head == content(hub, SINGLE_REPO, SMOLLM2_Q4_1)[100:1100]
    bodies = hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1)
    assert bodies and all(r.range is not None and r.status == 206 for r in bodies)
    assert hub.bytes_served(SINGLE_REPO, SMOLLM2_Q4_1) <= 2 * 4096 + 1000


def test_a_dropped_connection_is_resumed_by_the_client_with_a_range_request(hub, hf_cache):
    size = hub.size(SPLIT_REPO, SPLIT_SHARDS[0])
    hub.cut(SPLIT_SHARDS[0], 25_000_000)
    path = hf_hub_download(SPLIT_REPO, SPLIT_SHARDS[0])
    assert sha256(path) == hub.sha256(SPLIT_REPO, SPLIT_SHARDS[0])
    first, resumed = hub.body_requests(SPLIT_REPO, SPLIT_SHARDS[0])
    assert first.aborted and first.body_bytes == 25_000_000
    # the client resumes from the last whole chunk it wrote (10 MiB chunks)
    assert resumed.status == 206 and resumed.range == f"bytes={20 * 1024 * 1024}-"
    assert resumed.body_bytes == size - 20 * 1024 * 1024


class _Cancelled(Exception):
    pass


class _CancelAfterFirstChunk(hf_tqdm):
    def update(self, n: float | None = 1) -> bool | None:
        raise _Cancelled()


def test_a_cancelled_download_leaves_no_partial_file_so_the_next_one_starts_over(hub, hf_cache):
    """huggingface_hub 2.x writes each download to a file of its own and deletes
    it on failure: within one call it resumes (above), across calls it does not."""
    with pytest.raises(_Cancelled):
        hf_hub_download(SINGLE_REPO, SMOLLM2_Q4_1, tqdm_class=_CancelAfterFirstChunk)
    assert not [p for p in hf_cache.rglob("*") if p.is_file() and "blobs" in p.parts]
    hub.reset()
    path = hf_hub_download(SINGLE_REPO, SMOLLM2_Q4_1)
    assert sha256(path) == hub.sha256(SINGLE_REPO, SMOLLM2_Q4_1)
    (again,) = hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1)
    assert again.range is None and again.body_bytes == hub.size(SINGLE_REPO, SMOLLM2_Q4_1)


def test_hold_stops_a_body_at_an_exact_byte_until_released(hub, hf_cache):
    hub.hold(SMOLLM2_Q4_1, 3_000_000)
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(hf_hub_download(SINGLE_REPO, SMOLLM2_Q4_1)), daemon=True)
    worker.start()
    assert hub.held.wait(10)
    assert hub.bytes_served(SINGLE_REPO, SMOLLM2_Q4_1) == 3_000_000
    hub.release()
    worker.join(30)
    assert done and sha256(done[0]) == hub.sha256(SINGLE_REPO, SMOLLM2_Q4_1)


def test_a_client_hanging_up_on_a_held_body_is_recorded(hub, hf_cache):
    hub.hold(SMOLLM2_Q4_1, 1_000_000)
    url = hf_hub_url(SINGLE_REPO, SMOLLM2_Q4_1)
    with get_session().stream("GET", url, follow_redirects=True) as response:
        assert response.status_code == 200
        assert hub.held.wait(10)
    (body,) = hub.body_requests(SINGLE_REPO, SMOLLM2_Q4_1)
    assert body.finished.wait(10)
    assert body.aborted and not body.complete and body.body_bytes == 1_000_000


def test_a_throttled_body_still_arrives_whole(hub, hf_cache):
    hub.rate = 1_000_000
    path = hf_hub_download(VISION_REPO, PROJECTOR_F16)
    assert sha256(path) == hub.sha256(VISION_REPO, PROJECTOR_F16)
    with pytest.raises(ValueError, match="positive"):
        hub.rate = 0


def test_an_unsatisfiable_range_is_416_with_the_size(hub, hf_cache):
    size = hub.size(SINGLE_REPO, SMOLLM2_Q4_1)
    response = get_session().get(
        hf_hub_url(SINGLE_REPO, SMOLLM2_Q4_1), headers={"Range": f"bytes={size}-"}, follow_redirects=True
    )
    assert response.status_code == 416 and response.headers["Content-Range"] == f"bytes */{size}"


@given(size=st.integers(1, 10**9), data=st.data())
def test_a_range_is_the_bytes_it_names_clipped_to_the_file(size, data):
    start = data.draw(st.integers(0, size - 1))
    end = data.draw(st.integers(start, size + 1000))
    assert _byte_range(f"bytes={start}-{end}", size) == (start, min(end + 1, size))
    assert _byte_range(f"bytes={start}-", size) == (start, size)
    suffix = data.draw(st.integers(1, size + 1000))
    assert _byte_range(f"bytes=-{suffix}", size) == (max(0, size - suffix), size)
    with pytest.raises(HubError):
        _byte_range(f"bytes={size + data.draw(st.integers(0, 100))}-", size)


# -- errors the client raises ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "filename", "revision", "token", "error", "status"),
    [
        ("llamagate-test/no-such-repo", SMOLLM2_Q4_1, None, None, RepositoryNotFoundError, 401),
        (SINGLE_REPO, "no-such-file.gguf", None, None, RemoteEntryNotFoundError, 404),
        (SINGLE_REPO, SMOLLM2_Q4_1, "no-such-branch", None, RevisionNotFoundError, 404),
        (GATED_REPO, SMOLLM2_Q4_1, None, None, GatedRepoError, 401),
        (GATED_REPO, SMOLLM2_Q4_1, None, OTHER_TOKEN, GatedRepoError, 403),
        (PRIVATE_REPO, SMOLLM2_Q4_1, None, None, RepositoryNotFoundError, 401),
        (PRIVATE_REPO, SMOLLM2_Q4_1, None, OTHER_TOKEN, RepositoryNotFoundError, 404),
    ],
)
def test_download_errors_are_the_clients_exceptions(hub, hf_cache, repo, filename, revision, token, error, status):
    with pytest.raises(error) as raised:
        hf_hub_download(repo, filename, revision=revision, token=token)
    assert raised.value.response.status_code == status
    assert hub.bytes_served() == 0


def test_an_unknown_token_is_refused_as_invalid_credentials(hub, hf_cache):
    with pytest.raises(HfHubHTTPError, match="Invalid credentials") as raised:
        hf_hub_download(SINGLE_REPO, SMOLLM2_Q4_1, token="hf_not_a_token")
    assert not isinstance(raised.value, RepositoryNotFoundError)


def test_gated_metadata_is_public_private_metadata_is_not(hub, hf_cache):
    assert HfApi().model_info(GATED_REPO).gated == "manual"
    assert SMOLLM2_Q4_1 in HfApi().list_repo_files(GATED_REPO)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(PRIVATE_REPO)
    assert HfApi(token=ACCESS_TOKEN).model_info(PRIVATE_REPO).private is True


def test_auth_check_tells_who_may_download_a_gated_repo(hub, hf_cache):
    HfApi().auth_check(SINGLE_REPO)
    HfApi(token=ACCESS_TOKEN).auth_check(GATED_REPO)
    for token in (None, OTHER_TOKEN):
        with pytest.raises(GatedRepoError):
            HfApi(token=token).auth_check(GATED_REPO)


def test_a_revision_may_be_the_commit_sha(hub, hf_cache):
    sha = hub.commit(SINGLE_REPO)
    assert HfApi().model_info(SINGLE_REPO, revision=sha).sha == sha
    path = hf_hub_download(SINGLE_REPO, "README.md", revision=sha)
    assert f"/snapshots/{sha}/" in path


# -- offline mode -----------------------------------------------------------------------------


def test_offline_a_cached_file_is_found_without_a_request(hub, hf_cache, hf_offline):
    path = hf_hub_download(SINGLE_REPO, SMOLLM2_Q4_1)
    hf_offline()
    hub.reset()
    assert hf_hub_download(SINGLE_REPO, SMOLLM2_Q4_1) == path
    assert hub.requests == []


def test_offline_an_uncached_file_is_a_local_entry_not_found(hub, hf_cache, hf_offline):
    hf_offline()
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(SINGLE_REPO, SMOLLM2_Q4_1)
    assert hub.requests == []


# -- the served repos ---------------------------------------------------------------------------


def test_the_split_is_three_shards_of_the_whole_model(hub_repos, smollm2_path):
    _, original, _ = _gguf_layout(smollm2_path.read_bytes())
    seen = []
    for i, name in enumerate(SPLIT_SHARDS):
        kvs, tensors, _ = _gguf_layout(hub_repos[SPLIT_REPO].files[name].read_bytes())
        assert (kvs["split.no"][-2:], kvs["split.count"][-2:]) == (bytes([i, 0]), bytes([3, 0]))
        assert ("general.architecture" in kvs) == (i == 0)  # every key in the first shard only
        seen += [(t.name, t.dims, t.kind, t.nbytes) for t in tensors]
    assert seen == [(t.name, t.dims, t.kind, t.nbytes) for t in original]


def test_the_variants_and_projectors_are_named_as_on_the_hub(hub_repos):
    tiny = hub_repos[TINY_REPO].files
    sizes = [tiny[f"Tiny-{v}.gguf"].stat().st_size for v in TINY_VARIANTS]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    vision = hub_repos[VISION_REPO].files
    assert {PROJECTOR_F16, PROJECTOR_BF16, SMOLLM2_Q4_1} <= set(vision)
    assert not any(name.endswith(".gguf") for name in hub_repos[NO_GGUF_REPO].files)
