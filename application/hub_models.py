"""Models from the Hub: resolve a source to files and read its header before
anything is downloaded, then download with progress (issue 11, SPEC §7).

The rules are the domain's (``domain.hub``, ``domain.hub_load``); the Hub and
the disk are ports. What lives here is what takes time: the header's growing
range reads, and the download's progress and rate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from llamagate.domain.errors import InvalidModel, NotCached
from llamagate.domain.hub import HubListing, HubSource
from llamagate.domain.hub_load import (
    DownloadProgress,
    HubModel,
    choose_for_disk,
    next_read_end,
    plan_for_disk,
)
from llamagate.domain.model_facts import ModelFacts
from llamagate.domain.model_info import LoadEvent, LoadPhase
from llamagate.domain.ports import DiskSpace, ModelHub, ModelInspector, NoTelemetry, Telemetry

log = logging.getLogger(__name__)

# Progress events per second at most (and one as each file ends): enough for
# a progress bar, few enough for a slow client.
_EVENTS_PER_S = 4
# The rate is measured over the last few seconds, so it follows the network.
_RATE_WINDOW_S = 3.0


@dataclass(frozen=True)
class Resolved:
    """A Hub source resolved: the files, and the model's header read from the first shard."""

    source: HubSource
    listing: HubListing
    model: HubModel
    facts: ModelFacts  # path: the repo's path of shard 1 until downloaded
    projector_bytes: int


@dataclass(frozen=True)
class Fetched:
    model_path: str  # shard 1 in the local cache
    projector_path: str  # "" when the repo has none


class HubModels:
    def __init__(self, hub: ModelHub, disk: DiskSpace, inspector: ModelInspector,
                 telemetry: Telemetry | None = None) -> None:
        self._hub = hub
        self._disk = disk
        self._inspector = inspector
        self._telemetry = telemetry or NoTelemetry()

    async def resolve(self, source: HubSource, *, for_load: bool) -> Resolved:
        """The files ``source`` means and the model's facts, from the Hub's
        metadata and a few range reads. ``for_load``: apply the disk
        preflight (a smaller variant when the one asked for does not fit)."""
        listing = await asyncio.to_thread(self._hub.listing, source)
        cached = await asyncio.to_thread(self._hub.cached_bytes, listing)
        free = await asyncio.to_thread(self._disk.free_bytes, self._hub.cache_dir)
        if self._hub.offline:
            model = plan_for_disk(listing, source.variant, cached, free, self._hub.cache_dir, source.revision)
            self._check_cached(source, listing, model)
        elif for_load:
            model = choose_for_disk(listing, source.variant, cached, free, self._hub.cache_dir, source.revision)
        else:
            model = plan_for_disk(listing, source.variant, cached, free, self._hub.cache_dir, source.revision)
        facts = await self._header(source, listing, model)
        mmproj = model.selection.mmproj
        return Resolved(source, listing, model, facts, mmproj.size if mmproj else 0)

    def _check_cached(self, source: HubSource, listing: HubListing, model: HubModel) -> None:
        missing = [f.path for f in model.selection.files if model.cached.get(f.path, 0) < f.size]
        if missing:
            raise NotCached(f"{model.reference} is not cached whole in {self._hub.cache_dir} (missing "
                            f"{', '.join(missing)}) and HF_HUB_OFFLINE is set: go online to download it")

    async def _header(self, source: HubSource, listing: HubListing, model: HubModel) -> ModelFacts:
        """The first shard's header by growing range reads, each driven by the
        scanner's "needs more bytes" (or read from the cache when it is there)."""
        first = model.first_shard
        name = f"{listing.repo}/{first.path}"
        if all(model.cached.get(f.path, 0) >= f.size for f in model.selection.model_files):
            local = await asyncio.to_thread(self._hub.local_path, listing, first.path)
            if local is not None:  # whole in the cache: no request at all
                return await asyncio.to_thread(self._inspector.inspect, local)

        def read(start: int, end: int) -> bytes:
            return self._hub.read_range(source, listing, first.path, start, end)

        held = b""
        needed = 0
        while True:
            end = next_read_end(len(held), needed, first.size)
            if end <= len(held):
                raise InvalidModel(f"{name} is not a valid GGUF model: its header runs past its end")
            chunk = await asyncio.to_thread(read, len(held), end)
            if not chunk:
                raise InvalidModel(f"{name} ended after {len(held)} bytes, inside its GGUF header")
            held += chunk
            found = self._inspector.inspect_prefix(held, name, model.model_bytes)
            if isinstance(found, ModelFacts):
                return found
            needed = found.at_least

    async def download(self, resolved: Resolved, emit: Callable[[LoadEvent], None]) -> Fetched:
        """Fetch every file not yet whole in the cache, shard by shard, with
        DOWNLOADING events; cancellation stops it at once, resumable."""
        files = resolved.model.selection.files
        meter = _Meter(resolved.model.bytes_total, len(files), emit)

        def progress(n: int) -> None:
            meter.add(n)
            self._telemetry.downloaded(n)

        paths = []
        for index, file in enumerate(files, start=1):
            local = await asyncio.to_thread(self._hub.local_path, resolved.listing, file.path)
            if local is None:
                meter.start(file.path, index)
                local = await self._hub.download(resolved.source, resolved.listing, file, progress)
                meter.finish(from_cache=False)
            else:
                meter.start(file.path, index)
                meter.skip(file.size)
            paths.append(local)
        model_paths = paths[: len(resolved.model.selection.model_files)]
        projector = paths[len(model_paths)] if resolved.model.selection.mmproj else ""
        log.info("%s: %d file(s) ready in %s", resolved.model.reference, len(paths), self._hub.cache_dir)
        return Fetched(model_paths[0], projector)


def fetched_facts(resolved: Resolved, fetched: Fetched) -> ModelFacts:
    """The facts read remotely, now about the local file: the same plan follows."""
    return replace(resolved.facts, path=fetched.model_path)


def describe(model: HubModel) -> str:
    """One line for the RESOLVING event."""
    files = model.selection.files
    cached = "all in the local cache" if model.bytes_to_download == 0 else \
        f"{model.bytes_to_download / (1 << 20):.1f} MiB to download"
    return (f"{model.reference} at {model.commit[:12]}: {len(files)} file(s), "
            f"{model.bytes_total / (1 << 20):.1f} MiB, {cached}")


class _Meter:
    """Bytes and rate across the files of one download, throttled into events."""

    def __init__(self, total: int, count: int, emit: Callable[[LoadEvent], None]) -> None:
        self._total, self._count, self._emit = total, count, emit
        self._done = 0
        self._file, self._index = "", 0
        self._samples: list[tuple[float, int]] = []
        self._last_event = float("-inf")

    def start(self, file: str, index: int) -> None:
        self._file, self._index = file, index

    def add(self, n: int) -> None:
        self._done += n
        now = asyncio.get_running_loop().time()
        self._samples.append((now, self._done))
        while self._samples and self._samples[0][0] < now - _RATE_WINDOW_S:
            self._samples.pop(0)
        if now - self._last_event >= 1 / _EVENTS_PER_S:
            self._event(from_cache=False)

    def skip(self, size: int) -> None:
        self._done += size
        self._event(from_cache=True)

    def finish(self, *, from_cache: bool) -> None:
        self._event(from_cache=from_cache)

    def _rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def _event(self, *, from_cache: bool) -> None:
        self._last_event = asyncio.get_running_loop().time()
        progress = DownloadProgress(self._file, self._index, self._count, min(self._done, self._total),
                                    self._total, 0.0 if from_cache else self._rate(), from_cache)
        verb = "in the local cache" if from_cache else f"{progress.bytes_per_second / (1 << 20):.1f} MiB/s"
        message = (f"{self._file} ({self._index} of {self._count}): {progress.bytes_done >> 20} of "
                   f"{self._total >> 20} MiB, {verb}")
        self._emit(LoadEvent(LoadPhase.DOWNLOADING, message, progress.bytes_done, self._total, download=progress))

