"""ModelHub over huggingface_hub 2.4: listings, its shared cache, range reads, downloads (issue 11).

Endpoint, cache folder and token are fixed when the hub is made and passed
to every huggingface_hub call, so two hubs in one process never mix them
(huggingface_hub itself still honours HF_HUB_OFFLINE). huggingface_hub's
exceptions become the domain's in `hub_errors`, the one translation every
method uses. The byte transfer of a download is ours (hub_download.py says
why); huggingface_hub makes the cache layout around it, so its own tools and
llama.cpp's users find the files where they look.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping

import httpx2
from huggingface_hub import (
    CachedRevisionInfo,
    HfApi,
    HfFileMetadata,
    constants,
    get_hf_file_metadata,
    get_session,
    hf_hub_download,
    hf_hub_url,
    hf_raise_for_status,
    scan_cache_dir,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    CacheNotFound,
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

# Private to huggingface_hub, and exactly what hf_hub_download writes for a
# branch or tag; see HfHub._link for why we cannot let it write the ref itself.
from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision, repo_folder_name
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # public; its __all__ is built at run time

from llamagate.adapters.hub_download import SHA256, Blob, body_start, fetch
from llamagate.domain.errors import (
    InsufficientResources,
    LlamagateError,
    ModelNotFound,
    NotCached,
    PermissionDenied,
    SourceUnavailable,
)
from llamagate.domain.hub import HubFile, HubListing, HubSource


class HfHub:
    """The Hugging Face Hub (or a mirror at ``endpoint``) and its local cache.

    Each None reads huggingface_hub's own setting now (HF_ENDPOINT,
    HF_HUB_CACHE, HF_HUB_OFFLINE); a None token is whatever huggingface_hub
    finds (HF_TOKEN, ``hf auth login``). A source's own token wins over it.
    """

    def __init__(self, endpoint: str | None = None, cache_dir: str | None = None, offline: bool | None = None,
                 token: str | None = None) -> None:
        self._endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        # resolved as hf_hub_download resolves it, so the paths both return agree
        self._cache_dir = os.path.realpath(os.path.expanduser(cache_dir or constants.HF_HUB_CACHE))
        self._offline = constants.HF_HUB_OFFLINE if offline is None else offline
        self._token = token or None
        self._timeout = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)  # seconds without a byte before giving up
        self._api = HfApi(endpoint=self._endpoint)

    @property
    def cache_dir(self) -> str:
        return self._cache_dir

    @property
    def offline(self) -> bool:
        return self._offline

    def listing(self, source: HubSource) -> HubListing:
        if self._offline:
            return self._cached_listing(source)
        with hub_errors(self._endpoint, source.repo, source.revision):
            info = self._api.model_info(source.repo, revision=source.revision or None, files_metadata=True,
                                        token=self._token_for(source), timeout=self._timeout)
        if not info.sha:
            raise SourceUnavailable(f"the Hub ({self._endpoint}) named no commit for {source.repo}")
        files = tuple(HubFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else "") for s in info.siblings or ())
        return HubListing(source.repo, info.sha, files)

    def cached_bytes(self, listing: HubListing) -> Mapping[str, int]:
        held = {f.path: self._held_bytes(listing, f) for f in listing.files if f.path.lower().endswith(".gguf")}
        return {path: n for path, n in held.items() if n > 0}

    def local_path(self, listing: HubListing, path: str) -> str | None:
        found = try_to_load_from_cache(listing.repo, path, cache_dir=self._cache_dir, revision=listing.commit)
        return found if isinstance(found, str) else None  # not the "known missing" marker

    def read_range(self, source: HubSource, listing: HubListing, path: str, start: int, end: int) -> bytes:
        if start < 0 or end < start:
            raise ValueError(f"not a byte range of {path}: [{start}, {end})")
        end = min([end, *(f.size for f in listing.files if f.path == path)])  # clipped at the file's end
        if end <= start:
            return b""
        self._require_online(listing.repo, path)
        url = hf_hub_url(listing.repo, path, revision=listing.commit, endpoint=self._endpoint)
        headers = {**build_hf_headers(token=self._token_for(source)), "Range": f"bytes={start}-{end - 1}"}
        with hub_errors(self._endpoint, listing.repo, source.revision, path), get_session().stream(
            "GET", url, headers=headers, follow_redirects=True, timeout=self._timeout
        ) as response:
            if response.status_code == 416:  # nothing of the file is there
                return b""
            hf_raise_for_status(response)
            offset = body_start(response)  # 0 when the server ignored the Range and sends the whole file
            if offset > start:
                raise SourceUnavailable(f"the Hub sent {path} of {listing.repo} from byte {offset}, not {start}")
            return _take(response.iter_bytes(), skip=start - offset, count=end - start)

    async def download(self, source: HubSource, listing: HubListing, file: HubFile,
                       progress: Callable[[int], None]) -> str:
        found = self.local_path(listing, file.path)
        if found is not None:
            return found
        self._require_online(listing.repo, file.path)
        token = self._token_for(source)
        url = hf_hub_url(listing.repo, file.path, revision=listing.commit, endpoint=self._endpoint)
        with hub_errors(self._endpoint, listing.repo, source.revision, file.path):
            meta = await asyncio.to_thread(get_hf_file_metadata, url, token=token, endpoint=self._endpoint)
            blob = self._blob(listing, file, url, token, meta)
            try:
                await fetch(blob, progress, timeout=self._timeout)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                raise self._disk_full(blob) from error
            return await asyncio.to_thread(self._link, source, listing, file.path, token)

    def _disk_full(self, blob: Blob) -> InsufficientResources:
        """The disk filled up under a download (the preflight saw room, something else took it)."""
        have = os.path.getsize(blob.partial) if os.path.exists(blob.partial) else 0
        free = shutil.disk_usage(os.path.dirname(blob.partial)).free
        return InsufficientResources(
            f"the disk holding {self._cache_dir} filled up while downloading {blob.what} ({have >> 20} of "
            f"{blob.size >> 20} MiB fetched, kept for the next load); free some space and load again",
            reason="DISK_FULL", needed=blob.size - have, available=free, where=self._cache_dir)

    # -- helpers ----------------------------------------------------------------------

    def _token_for(self, source: HubSource) -> str | None:
        return source.token or self._token or None

    def _storage(self, repo: str) -> str:
        return os.path.join(self._cache_dir, repo_folder_name(repo_id=repo, repo_type="model"))

    def _require_online(self, repo: str, path: str) -> None:
        if self._offline:
            raise NotCached(f"{path} of {repo} is not in the local Hub cache at {self._cache_dir},"
                            " and HF_HUB_OFFLINE is set: fetch it once online, or unset HF_HUB_OFFLINE")

    def _blob(self, listing: HubListing, file: HubFile, url: str, token: str | None, meta: HfFileMetadata) -> Blob:
        """Where the file goes in the cache, named by its etag as huggingface_hub names it."""
        if not meta.etag:
            raise SourceUnavailable(f"the Hub ({self._endpoint}) gave no etag for {file.path} of {listing.repo}")
        storage = self._storage(listing.repo)
        lock = os.path.join(self._cache_dir, ".locks", os.path.basename(storage), f"{meta.etag}.lock")
        size = meta.size if meta.size is not None else file.size
        return Blob(url, build_hf_headers(token=token), meta.etag, size, storage, lock,
                    f"{file.path} from {listing.repo}")

    def _held_bytes(self, listing: HubListing, file: HubFile) -> int:
        """Whole (at this commit, or as a blob another revision holds), or our resumable part."""
        if self.local_path(listing, file.path) is not None:
            return file.size
        if not file.sha256:
            return 0
        blob = os.path.join(self._storage(listing.repo), "blobs", file.sha256)
        if os.path.isfile(blob):  # hf_hub_download links it without a body
            return file.size
        try:
            return min(os.path.getsize(blob + ".incomplete"), file.size)
        except OSError:
            return 0

    def _link(self, source: HubSource, listing: HubListing, path: str, token: str | None) -> str:
        """The snapshot pointer to the finished blob, made by huggingface_hub (blocking, one HEAD).

        Pinned to the listing's commit: asked for a branch that moved since
        the listing, hf_hub_download would fetch the new file's body itself,
        uncancellable in its thread. So the branch's ref is written apart.
        """
        pointer = hf_hub_download(listing.repo, path, revision=listing.commit, cache_dir=self._cache_dir,
                                  endpoint=self._endpoint, token=token)
        if not isinstance(pointer, str) or not os.path.isfile(pointer):
            raise SourceUnavailable(f"huggingface_hub made no cache entry for {path} of {listing.repo}")
        _cache_commit_hash_for_specific_revision(self._storage(listing.repo), source.revision or "main",
                                                 listing.commit)
        return pointer

    def _cached_listing(self, source: HubSource) -> HubListing:
        """What the cache holds of the source's revision (offline)."""
        revision, problems = self._cached_revision(source)
        if revision is None:
            raise NotCached(
                f"{source.repo} (revision {source.revision or 'main'}) is not in the local Hub cache at"
                f" {self._cache_dir}, and HF_HUB_OFFLINE is set: fetch it once online, or unset HF_HUB_OFFLINE"
                + (f" (the cache has a problem there: {problems})" if problems else "")
            )
        files = sorted(
            (
                HubFile(f.file_path.relative_to(revision.snapshot_path).as_posix(), f.size_on_disk,
                        f.blob_path.name if SHA256.fullmatch(f.blob_path.name) else "")
                for f in revision.files
            ),
            key=lambda f: f.path,
        )
        return HubListing(source.repo, revision.commit_hash, tuple(files))

    def _cached_revision(self, source: HubSource) -> tuple[CachedRevisionInfo | None, str]:
        """The cached revision a branch or tag ref names, or whose commit starts with the revision given."""
        try:
            cache = scan_cache_dir(self._cache_dir)
        except CacheNotFound:
            return None, ""
        folder = repo_folder_name(repo_id=source.repo, repo_type="model")
        problems = "; ".join(str(w) for w in cache.warnings if folder in str(w))
        wanted = source.revision or "main"
        for repo in cache.repos:
            if repo.repo_type != "model" or repo.repo_id != source.repo:
                continue
            for revision in sorted(repo.revisions, key=lambda r: r.commit_hash):
                if wanted in revision.refs or (source.revision and revision.commit_hash.startswith(source.revision)):
                    return revision, problems
        return None, problems


def _take(chunks: Iterable[bytes], *, skip: int, count: int) -> bytes:
    """``count`` bytes after the first ``skip`` of a stream, reading no further than that."""
    out = bytearray()
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        out += chunk[skip : skip + count - len(out)]
        skip = 0
        if len(out) >= count:
            break
    return bytes(out)


@contextlib.contextmanager
def hub_errors(endpoint: str, repo: str, revision: str = "", path: str = "") -> Iterator[None]:
    """huggingface_hub's and httpx's failures as the domain's errors (CancelledError passes)."""
    try:
        yield
    except Exception as error:
        mapped = translate(error, endpoint, repo, revision, path)
        if mapped is None:
            raise
        raise mapped from error


def translate(error: Exception, endpoint: str, repo: str, revision: str = "", path: str = "") -> LlamagateError | None:
    """The domain's error for a failure of a Hub call, or None for one that is not the Hub's (a full disk)."""
    if isinstance(error, GatedRepoError):  # before RepositoryNotFoundError: it is one
        return PermissionDenied(
            f"{repo} is a gated repository: its files need the token of an account that accepted its"
            f" conditions at {endpoint}/{repo}"
        )
    status = error.response.status_code if isinstance(error, HfHubHTTPError) else 0
    if isinstance(error, RepositoryNotFoundError) and (
        status == 404 or error.response.headers.get("X-Error-Code") == "RepoNotFound"
    ):
        return ModelNotFound(
            f"no repository {repo} on the Hub ({endpoint}); a private repository looks the same"
            " without a token that may read it"
        )
    if isinstance(error, RevisionNotFoundError):
        return ModelNotFound(f"{repo} has no revision {revision!r} on the Hub ({endpoint})")
    if isinstance(error, RemoteEntryNotFoundError):
        return ModelNotFound(f"{repo} has no file {path} on the Hub ({endpoint})")
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return PermissionDenied(_refused(error, endpoint, repo))
    if isinstance(error, HfHubHTTPError):
        why = error.server_message or str(error).splitlines()[0]
        return SourceUnavailable(f"the Hub ({endpoint}) answered {status} for {repo}: {why}",
                                 retry_after_s=_retry_after(error))
    if isinstance(error, OfflineModeIsEnabled):
        return SourceUnavailable(f"the Hub ({endpoint}) may not be reached: HF_HUB_OFFLINE is set")
    if isinstance(error, httpx2.RequestError | LocalEntryNotFoundError | FileMetadataError):
        return SourceUnavailable(f"could not reach the Hub ({endpoint}) for {repo}: {error}")
    return None


def _refused(error: HfHubHTTPError, endpoint: str, repo: str) -> str:
    sent = error.response.request.headers.get("Authorization") is not None  # whether, never which
    why = error.server_message or f"HTTP {error.response.status_code}"
    if sent:
        return f"the Hub ({endpoint}) refused the token for {repo} ({why}): check HF_TOKEN or the token sent"
    return f"the Hub ({endpoint}) refused {repo} without a token ({why}): set HF_TOKEN or send one"


def _retry_after(error: HfHubHTTPError) -> float | None:
    value = error.response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None
