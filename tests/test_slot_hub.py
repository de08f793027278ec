"""The model slot loading from the Hub, against fakes of every port (issue 11):
what is checked before a download, the download beside a serving model, and
how every way a download ends leaves the slot."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from fakes import FakeDiskSpace, FakeHub, FakeInspector, FakeLauncher, FakeMemory, model_facts
from stories import play
from test_slot import error_of, until

from llamagate.application.hub_models import HubModels
from llamagate.application.slot import ModelSlot, SlotSettings
from llamagate.domain.chat import GenerateRequest, Role, Sampling, text_message
from llamagate.domain.errors import (
    Cancelled,
    InsufficientResources,
    InvalidArgument,
    SourceUnavailable,
    Superseded,
)
from llamagate.domain.hub import HubSource
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.model_info import LoadEvent, LoadPhase
from llamagate.domain.model_state import ModelState
from llamagate.domain.restart_policy import RestartPolicy

LOCAL = "/models/a.gguf"
REPO = "org/Model-GGUF"
FILE = "Model-Q4_K_M.gguf"
SHARDS = [f"Q8_0/Model-Q8_0-0000{i}-of-00002.gguf" for i in (1, 2)]
PROJECTOR = "mmproj-Model-f16.gguf"
HEADER = 1000  # bytes of the fake header
SOURCE = HubSource(REPO)
QUESTION = GenerateRequest((text_message(Role.USER, "hi"),), Sampling(max_tokens=8))


class World:
    def __init__(self, memory: FakeMemory | None = None, disk: FakeDiskSpace | None = None) -> None:
        self.hub = FakeHub({REPO: {FILE: b"q" * 4000, SHARDS[0]: b"a" * 3000, SHARDS[1]: b"b" * 3000,
                                   PROJECTOR: b"p" * 500, "README.md": b"hi"}})
        self.inspector = FakeInspector(model_facts(LOCAL), model_facts(f"{REPO}/{FILE}"),
                                       model_facts(f"{REPO}/{SHARDS[0]}"), header_bytes=HEADER)
        self.launcher = FakeLauncher()
        self.disk = disk or FakeDiskSpace()
        hub = HubModels(self.hub, self.disk, self.inspector)
        self.memory = memory or FakeMemory()
        self.slot = ModelSlot(self.inspector, self.launcher, self.memory,
                              SlotSettings(restart=RestartPolicy(enabled=False)), hub=hub)

    async def load(self, source: str | HubSource, **options: object) -> list[LoadEvent]:
        return [e async for e in self.slot.load(source, LoadOptions(**options))]  # type: ignore[arg-type]

    async def answers(self) -> bool:
        return bool([e async for e in self.slot.generate(QUESTION)])


def run(story: Callable[[World], Awaitable[None]], **parts: object) -> None:
    play(World(**parts), story, lambda w: w.slot.close())  # type: ignore[arg-type]


def test_a_hub_model_is_planned_from_its_header_then_downloaded_then_started_from_the_cache():
    async def story(w: World) -> None:
        events = await w.load(SOURCE)
        order = [e.phase for e in events]
        assert order.index(LoadPhase.DOWNLOADING) < order.index(LoadPhase.PLANNING) < order.index(LoadPhase.READY)
        assert w.hub.range_reads == [(REPO, FILE, 0, 4000)]  # the whole small file: its header is in it
        (hub,) = [e.hub for e in events if e.hub is not None]
        assert hub.selection.variant == "Q4_K_M" and [f.path for f in hub.selection.files] == [FILE, PROJECTOR]
        done = [e.download for e in events if e.download is not None]
        assert done[-1].bytes_done == done[-1].bytes_total == 4500
        (spec,) = w.launcher.launched
        assert spec.model_path == w.hub.local_path(hub_listing(w), FILE)
        assert spec.mmproj_path == w.hub.local_path(hub_listing(w), PROJECTOR)
        assert w.slot.status().id == "Model-Q4_K_M"
    run(story)


def hub_listing(w: World):
    return w.hub.listing(SOURCE)


def test_every_shard_is_fetched_and_the_first_one_is_started():
    async def story(w: World) -> None:
        await w.load(HubSource(REPO, "Q8_0"))
        assert [(path, start) for _, path, start in w.hub.downloads] == [(SHARDS[0], 0), (SHARDS[1], 0),
                                                                      (PROJECTOR, 0)]
        assert w.launcher.launched[-1].model_path.endswith(SHARDS[0])
        assert w.slot.status().size_bytes == 6000
    run(story)


def test_the_loaded_model_serves_while_its_replacement_downloads_and_stays_when_it_fails():
    async def story(w: World) -> None:
        await w.load(LOCAL)
        w.hub.hold, w.hub.corrupt = asyncio.Event(), {(REPO, FILE)}
        load = asyncio.ensure_future(w.load(SOURCE))
        await until(lambda: bool(w.hub.downloads))
        assert w.slot.status().state is ModelState.READY and w.slot.status().path == LOCAL
        assert await w.answers()
        w.hub.hold.set()
        error = await error_of(load)
        assert isinstance(error, SourceUnavailable) and "sha256" in str(error)
        assert w.slot.status().state is ModelState.READY and w.slot.status().path == LOCAL
        assert len(w.launcher.launched) == 1 and await w.answers()  # never stopped, never restarted
    run(story)


def test_a_caller_leaving_mid_download_keeps_the_loaded_model_and_the_fetched_part():
    async def story(w: World) -> None:
        await w.load(LOCAL)
        w.hub.hold = asyncio.Event()
        events = w.slot.load(SOURCE, LoadOptions())
        async for event in events:
            if event.phase is LoadPhase.DOWNLOADING:
                break
        await events.aclose()  # the caller went away (a cancel, a deadline)
        await w.slot.settled()
        assert w.hub.cancelled == 1 and w.hub.partial[(REPO, FILE)] == 2000
        assert w.slot.status().state is ModelState.READY and w.slot.status().path == LOCAL
        w.hub.hold = None
        await w.load(SOURCE)  # resumed where it stopped
        assert w.hub.downloads[-2][1:] == (FILE, 2000)
    run(story)


def test_on_an_empty_slot_a_download_shows_as_loading_and_its_end_settles_the_slot():
    async def story(w: World) -> None:
        w.hub.hold = asyncio.Event()
        cancelled = asyncio.ensure_future(w.load(SOURCE))
        await until(lambda: bool(w.hub.downloads))
        assert w.slot.status().state is ModelState.LOADING and w.slot.status().id == "Model-Q4_K_M"
        cancelled.cancel()
        await w.slot.settled()
        assert w.slot.status().state is ModelState.EMPTY

        w.hub.hold, w.hub.corrupt = None, {(REPO, FILE)}
        error = await error_of(w.load(SOURCE))
        assert isinstance(error, SourceUnavailable)
        status = w.slot.status()
        assert status.state is ModelState.FAILED and "sha256" in status.last_error
        assert w.launcher.launched == []
    run(story)


def test_unload_and_a_later_load_end_a_download():
    async def story(w: World) -> None:
        await w.load(LOCAL)
        w.hub.hold = asyncio.Event()
        load = asyncio.ensure_future(w.load(SOURCE))
        await until(lambda: bool(w.hub.downloads))
        await w.slot.unload()
        assert isinstance(await error_of(load), Superseded)
        assert w.slot.status().state is ModelState.EMPTY and w.hub.cancelled == 1

        load = asyncio.ensure_future(w.load(SOURCE))  # the model's rest, then the projector, held
        await until(lambda: [path for _, path, _ in w.hub.downloads][1:] == [FILE, PROJECTOR])
        await w.load(LOCAL)
        assert isinstance(await error_of(load), Superseded)
        assert w.slot.status().path == LOCAL and w.hub.cancelled == 2
    run(story)


def test_what_cannot_fit_fails_before_any_download():
    async def story(w: World) -> None:
        error = await error_of(w.load(SOURCE))
        assert isinstance(error, InsufficientResources) and error.reason == "MODEL_TOO_LARGE"
        assert w.hub.downloads == [] and w.slot.status().state is ModelState.EMPTY
    run(story, memory=FakeMemory(host_free=1000))


def test_the_memory_the_replaced_model_holds_counts_as_free_for_its_replacement():
    async def story(w: World) -> None:
        await w.load(LOCAL)  # a SmolLM2-shaped model of 90 MiB and its KV cache
        w.memory.host_free = 60 << 20  # what is left beside it
        await w.load(SOURCE)
        assert w.slot.status().id == "Model-Q4_K_M"
        await w.slot.unload()
        w.hub.whole.clear()  # as if the cache were emptied
        fetched = len(w.hub.downloads)
        error = await error_of(w.load(SOURCE))  # nothing to replace: 60 MiB is all there is
        assert isinstance(error, InsufficientResources) and len(w.hub.downloads) == fetched
    run(story)


def test_a_disk_too_small_takes_a_smaller_variant_or_fails_with_the_numbers():
    async def story(w: World) -> None:
        w.disk.free = 100
        error = await error_of(w.load(HubSource(REPO, "Q8_0")))
        assert isinstance(error, InsufficientResources) and error.reason == "DISK_FULL"
        assert error.where == w.hub.cache_dir and error.available == 100
        w.disk.free = 5000  # Q8_0 (6000) does not fit; Q4_K_M (4000) and the projector (500) do
        events = await w.load(HubSource(REPO, "Q8_0"))
        (hub,) = [e.hub for e in events if e.hub is not None]
        assert hub.selection.variant == "Q4_K_M" and hub.fallback_from == "Q8_0"
        assert w.disk.asked == [w.hub.cache_dir] * 2 and w.hub.downloads[0][1] == FILE
    run(story)


def test_a_hub_source_names_no_projector_file_and_a_slot_without_a_hub_refuses_it():
    async def story(w: World) -> None:
        error = await error_of(w.load(SOURCE, mmproj_path="/models/p.gguf"))
        assert isinstance(error, InvalidArgument) and error.field == "options.mmproj_path"
        bare = ModelSlot(w.inspector, w.launcher, FakeMemory())
        error = await error_of(bare.plan(SOURCE, LoadOptions()))
        assert isinstance(error, InvalidArgument) and error.field == "hub"
        assert w.hub.range_reads == []
    run(story)


def test_planning_a_hub_model_downloads_nothing_and_reports_the_disk():
    async def story(w: World) -> None:
        w.disk.free = 10
        load_plan, hub = await w.slot.plan(HubSource(REPO, "Q8_0"), LoadOptions())
        assert hub is not None and not hub.fits_disk and hub.selection.variant == "Q8_0"
        assert load_plan.facts.size_bytes == 6000 and w.hub.downloads == []
        assert [(p, s) for _, p, s, _ in w.hub.range_reads] == [(SHARDS[0], 0)]
    run(story)


def test_cancelled_is_what_a_caller_hears_when_the_download_is_cancelled_under_it():
    async def story(w: World) -> None:
        w.hub.hold = asyncio.Event()
        events = w.slot.load(SOURCE, LoadOptions())
        async for event in events:
            if event.phase is LoadPhase.DOWNLOADING:
                break
        op_task = next(t for t in asyncio.all_tasks() if t.get_name().startswith("load of"))
        op_task.cancel()  # as if by the runtime: not superseded, not abandoned
        with pytest.raises(Cancelled):
            async for _ in events:
                pass
    run(story)
