"""Several models in one service, against fakes of every port (issue 12): ids,
placement by planned memory, eviction, on-demand loading, idle TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from fakes import FakeInspector, FakeLauncher, FakeMemory, model_facts
from stories import play
from test_slot import error_of, until

from llamagate.application.registry import ModelRegistry
from llamagate.application.slot import ModelSlot, SlotSettings
from llamagate.domain.chat import GenerateRequest, Role, Sampling, text_message
from llamagate.domain.errors import InsufficientResources, InvalidArgument, ModelNotFound, NoModelLoaded
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.model_config import ModelSpec, ServiceConfig
from llamagate.domain.model_state import ModelState
from llamagate.domain.placement import HOST
from llamagate.domain.ports import MemoryProbe
from llamagate.domain.restart_policy import RestartPolicy

MIB = 1 << 20
A, B, C = "/models/a.gguf", "/models/b.gguf", "/models/c.gguf"
SMALL = LoadOptions(context_length=2048)  # 90 MiB of weights + 45 MiB of KV cache: 135 MiB each
QUESTION = GenerateRequest((text_message(Role.USER, "hi"),), Sampling(max_tokens=8))


class World:
    def __init__(self, config: ServiceConfig | None = None, budget: int = 0,
                 memory: FakeMemory | None = None, cache_mib: int = 0) -> None:
        self.inspector = FakeInspector(model_facts(A), model_facts(B), model_facts(C))
        self.launcher = FakeLauncher()
        self.memory = memory or FakeMemory()

        def make_slot(view: MemoryProbe) -> ModelSlot:
            return ModelSlot(self.inspector, self.launcher, view,
                             SlotSettings(restart=RestartPolicy(enabled=False), host_cache_mib=cache_mib))

        self.registry = ModelRegistry(make_slot, self.memory, config, host_budget=budget,
                                      host_cache_bytes=cache_mib * MIB)

    async def load(self, path: str | None, name: str = "", options: LoadOptions = SMALL) -> str:
        events = [e async for e in self.registry.load(name, path, options if path else None)]
        assert events[-1].model is not None
        return events[-1].model.id

    async def ask(self, name: str = "") -> int:
        """The pid of the engine that answered."""
        slot = await self.registry.slot_for(name)
        [_ async for _ in slot.generate(QUESTION)]
        return slot.status().pid

    def alive(self) -> set[str]:
        return {e.spec.model_path for e in self.launcher.alive()}


def run(story: Callable[[World], Awaitable[None]], **parts: object) -> None:
    play(World(**parts), story, lambda w: w.registry.close())  # type: ignore[arg-type]


def test_two_models_are_resident_at_once_each_answered_by_its_own_child():
    async def story(w: World) -> None:
        assert await w.load(A) == "a" and await w.load(B, name="second") == "second"
        assert w.alive() == {A, B}
        pid_a, pid_b = await w.ask("a"), await w.ask("second")
        assert pid_a != pid_b and {pid_a, pid_b} == {e.pid for e in w.launcher.alive()}
        error = await error_of(w.registry.slot_for(""))
        assert isinstance(error, InvalidArgument) and "a, second" in str(error)
        assert isinstance(await error_of(w.registry.slot_for("nope")), ModelNotFound)
        entries = {e.id: e for e in w.registry.entries()}
        assert entries["a"].held == {HOST: 135 * MIB} and entries["a"].info.state is ModelState.READY
    run(story)


def test_loading_an_id_again_replaces_that_model_alone():
    async def story(w: World) -> None:
        await w.load(A, name="chat")
        await w.load(B)
        await w.load(C, name="chat")
        assert w.alive() == {B, C}
    run(story)


def test_a_budget_for_two_evicts_the_least_recently_used_idle_model_for_a_third():
    async def story(w: World) -> None:
        await w.load(A)
        await w.load(B)
        await w.ask("a")  # b is now the least recently used
        await w.load(C)
        assert w.alive() == {A, C}
        assert [e.id for e in w.registry.entries()] == ["a", "c"]  # b, loaded by request, is gone
    run(story, budget=300 * MIB)


def test_a_model_with_a_request_in_flight_is_never_evicted():
    async def story(w: World) -> None:
        await w.load(A)
        await w.load(B)
        engine_a = next(e for e in w.launcher.alive() if e.spec.model_path == A)
        engine_a.chat.hold = asyncio.Event()
        slot_a = await w.registry.slot_for("a")
        streaming = asyncio.ensure_future(w.ask("a"))
        await until(lambda: slot_a.in_flight == 1)
        await w.ask("b")  # b is the most recently used now; a is older but busy
        await w.load(C)
        assert w.alive() == {A, C}
        engine_a.chat.hold.set()
        await streaming
    run(story, budget=300 * MIB)


def test_pinned_and_busy_models_make_a_load_fail_with_the_numbers_and_nothing_stopped():
    config = ServiceConfig(models=(ModelSpec("a", A, SMALL, pinned=True), ModelSpec("b", B, SMALL)))

    async def story(w: World) -> None:
        await w.load(None, name="a")
        await w.load(None, name="b")
        engine_b = next(e for e in w.launcher.alive() if e.spec.model_path == B)
        engine_b.chat.hold = asyncio.Event()
        slot_b = await w.registry.slot_for("b")
        streaming = asyncio.ensure_future(w.ask("b"))
        await until(lambda: slot_b.in_flight == 1)
        error = await error_of(w.load(C))
        assert isinstance(error, InsufficientResources) and error.reason == "NO_ROOM"
        assert "a (pinned)" in str(error) and "b (1 request(s) in flight)" in str(error)
        assert error.needed == 135 * MIB and w.alive() == {A, B}
        assert "c" not in w.registry.ids()
        engine_b.chat.hold.set()
        await streaming
        await w.load(C)  # b is idle again: it goes, a (pinned) stays
        assert w.alive() == {A, C}
    run(story, config=config, budget=300 * MIB)


def test_concurrent_requests_for_a_configured_model_start_exactly_one_child():
    config = ServiceConfig(models=(ModelSpec("chat", A, SMALL),))

    async def story(w: World) -> None:
        w.launcher.hold_ready = True
        waiting = [asyncio.ensure_future(w.registry.slot_for("chat")) for _ in range(5)]
        await until(lambda: len(w.launcher.launched) == 1)
        w.launcher.ready.set()
        slots = await asyncio.gather(*waiting)
        assert len({id(s) for s in slots}) == 1 and len(w.launcher.launched) == 1
        assert slots[0].status().state is ModelState.READY
    run(story, config=config)


def test_a_request_that_gives_up_waiting_leaves_the_on_demand_load_to_finish():
    config = ServiceConfig(models=(ModelSpec("chat", A, SMALL),))

    async def story(w: World) -> None:
        w.launcher.hold_ready = True
        impatient = asyncio.ensure_future(w.registry.slot_for("chat"))
        await until(lambda: len(w.launcher.launched) == 1)
        impatient.cancel()  # its deadline passed
        w.launcher.ready.set()
        slot = await w.registry.slot_for("chat")
        assert slot.status().state is ModelState.READY and len(w.launcher.launched) == 1
    run(story, config=config)


def test_a_model_not_on_demand_is_not_loaded_by_a_request():
    config = ServiceConfig(models=(ModelSpec("chat", A, SMALL, on_demand=False),))

    async def story(w: World) -> None:
        slot = await w.registry.slot_for("chat")
        assert isinstance(await error_of(slot.generate(QUESTION).__anext__()), NoModelLoaded)
        assert w.launcher.launched == []
    run(story, config=config)


def test_idle_ttl_unloads_a_model_nobody_uses():
    config = ServiceConfig(models=(ModelSpec("chat", A, SMALL, idle_ttl_s=0.2), ModelSpec("kept", B, SMALL)))

    async def story(w: World) -> None:
        w.registry.start_reaper()
        await w.load(None, name="chat")
        await w.load(None, name="kept")
        await until(lambda: w.alive() == {B})
        assert {e.id: e.info.state for e in w.registry.entries()} == {"chat": ModelState.EMPTY,
                                                                      "kept": ModelState.READY}
    run(story, config=config)


def test_the_plan_says_what_a_load_would_evict():
    async def story(w: World) -> None:
        await w.load(A)
        await w.load(B)
        load_plan, _ = await w.registry.plan(C, SMALL)
        assert any("evicts a" in reason for reason in load_plan.plan.reasons)
        assert w.alive() == {A, B}  # planning evicts nothing
    run(story, budget=300 * MIB)


def test_on_gpus_the_planner_decides_with_what_an_eviction_frees():
    memory = FakeMemory(gpus=[GpuInfo(0, 200 * MIB, total_bytes=200 * MIB)], host_free=0)

    async def story(w: World) -> None:
        await w.load(A)  # its plan holds most of the GPU (the fake's probe does not move: the plans count)
        (share,) = [e.held for e in w.registry.entries()]
        assert set(share) == {"gpu0"} and w.registry.free_gpus()[0].free_bytes == 200 * MIB - share["gpu0"]
        await w.load(B)
        assert w.alive() == {B}  # a had to go: both do not fit 200 MiB
    run(story, memory=memory)


def test_a_model_alone_on_the_machine_still_goes_to_llama_servers_fit():
    async def story(w: World) -> None:
        await w.load(A, options=LoadOptions())  # native 8192 context: more than the 100 MiB there is
        assert w.alive() == {A}
    run(story, memory=FakeMemory(host_free=100 * MIB))


def test_a_bad_model_id_is_refused():
    async def story(w: World) -> None:
        with pytest.raises(ModelNotFound):
            await w.load(None, name="unknown")
    run(story)


def test_each_models_prompt_cache_counts_as_its_host_memory():
    async def story(w: World) -> None:
        await w.load(A)
        assert [e.held for e in w.registry.entries()] == [{HOST: (135 + 64) * MIB}]
        assert w.launcher.launched[0].host_cache_mib == 64
        await w.load(B)  # 2 x 199 MiB do not fit 300 MiB: a goes
        assert w.alive() == {B}
    run(story, budget=300 * MIB, cache_mib=64)
