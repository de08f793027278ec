"""The model slot against fakes of every port: no process, milliseconds each (issue 7).

Each test drives one story of a model's life and asserts what a client would
see (events, errors, status, health) and what the fakes saw (children
launched, alive, stopped).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fakes import FakeEngine, FakeInspector, FakeLauncher, FakeMemory, model_facts, reply

from llamagate.application.slot import ModelSlot, SlotSettings
from llamagate.application.watchdog import Watchdog
from llamagate.domain.batching import PromptStep
from llamagate.domain.chat import (
    ChatChunk,
    ContentDelta,
    Done,
    GenerateRequest,
    Role,
    Sampling,
    text_message,
)
from llamagate.domain.errors import (
    Aborted,
    Cancelled,
    EngineFailed,
    EngineNotFound,
    Internal,
    InvalidArgument,
    LlamagateError,
    NoModelLoaded,
    NotReady,
    Overloaded,
    Superseded,
)
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.model_info import LoadEvent, LoadPhase, ModelInfo
from llamagate.domain.model_state import ModelState
from llamagate.domain.restart_policy import RestartPolicy

A = "/models/a.gguf"
B = "/models/b.gguf"
C = "/models/c.gguf"
NO_RESTARTS = SlotSettings(restart=RestartPolicy(enabled=False))
# Restarts at once, twice at most; a silent engine is frozen after 50 ms.
RESTARTS = SlotSettings(restart=RestartPolicy(max_restarts=2, backoff_s=0.0, max_backoff_s=0.0),
                        watchdog=Watchdog(interval_s=0.005, silent_after_s=0.05))
# The same restarts with a watchdog no busy machine can fool: for stories of
# crashes, where a starved event loop must not pass for a frozen child.
CRASH_RESTARTS = SlotSettings(restart=RESTARTS.restart, watchdog=Watchdog(interval_s=0.05, silent_after_s=10.0))
QUESTION = GenerateRequest((text_message(Role.USER, "hi"),), Sampling(max_tokens=8))


class World:
    """A slot wired to fakes, with a listener recording every status it announces."""

    def __init__(self, settings: SlotSettings | None = None, launcher: FakeLauncher | None = None) -> None:
        self.inspector = FakeInspector(model_facts(A), model_facts(B), model_facts(C))
        self.launcher = launcher or FakeLauncher()
        self.memory = FakeMemory()
        self.slot = ModelSlot(self.inspector, self.launcher, self.memory, settings or NO_RESTARTS)
        self.heard: list[ModelInfo] = []
        self.slot.on_change(self.heard.append)

    @property
    def states(self) -> list[ModelState]:
        return [info.state for info in self.heard]

    def mark(self) -> int:
        return len(self.heard)

    def states_since(self, mark: int) -> list[ModelState]:
        return [info.state for info in self.heard[mark:]]

    async def load(self, path: str, **options: object) -> list[LoadEvent]:
        return [event async for event in self.slot.load(path, LoadOptions(**options))]  # type: ignore[arg-type]

    async def ask(self, request: GenerateRequest = QUESTION) -> list[object]:
        return [event async for event in self.slot.generate(request)]

    async def settle(self) -> None:
        await self.slot.settled()  # background operations (restarts) included


def run(story: Callable[[World], Awaitable[None]], settings: SlotSettings | None = None) -> None:
    async def main() -> None:
        world = World(settings)
        try:
            await asyncio.wait_for(story(world), timeout=10)
        finally:
            await world.slot.close()
            assert world.launcher.alive() == [], "a fake child outlived the slot"

    asyncio.run(main())


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


async def events_until(events: AsyncIterator[LoadEvent], phase: LoadPhase) -> list[LoadEvent]:
    seen = []
    async for event in events:
        seen.append(event)
        if event.phase is phase:
            return seen
    raise AssertionError(f"the load ended before {phase}")


async def drain(events: AsyncIterator[LoadEvent]) -> list[LoadEvent]:
    return [event async for event in events]


async def held_generation(w: World) -> tuple[FakeEngine, asyncio.Task[list[object]]]:
    """The loaded engine, and a generation it holds after its first chunk."""
    engine = w.launcher.alive()[0]
    engine.chat.hold = asyncio.Event()
    generation = asyncio.create_task(w.ask())
    await until(lambda: engine.chat.streaming == 1)
    return engine, generation


async def error_of(awaitable: Awaitable[object]) -> LlamagateError:
    with pytest.raises(LlamagateError) as caught:
        await awaitable
    return caught.value


# ------------------------------------------------------------------ loading


def test_a_load_streams_its_phases_and_ends_ready_with_a_live_child():
    async def story(w: World) -> None:
        events = await w.load(A, context_length=2048)

        phases = [e.phase for e in events]
        assert phases[:3] == [LoadPhase.RESOLVING, LoadPhase.PLANNING, LoadPhase.STARTING]
        assert phases[-1] is LoadPhase.READY and set(phases[3:-1]) == {LoadPhase.LOADING}
        status = w.slot.status()
        assert (status.state, status.path, status.context_length) == (ModelState.READY, A, 2048)
        assert status.pid == w.launcher.alive()[0].pid and len(w.launcher.launched) == 1
        assert w.launcher.launched[0].context_length == 2048
        assert w.states == [ModelState.LOADING, ModelState.LOADING, ModelState.LOADING, ModelState.READY]

    run(story)


def test_listeners_hear_every_state_in_order_and_ready_before_the_caller_does():
    async def story(w: World) -> None:
        ready_heard_before_event: list[bool] = []
        async for event in w.slot.load(A, LoadOptions()):
            if event.phase is LoadPhase.READY:
                ready_heard_before_event.append(w.heard[-1].state is ModelState.READY)
        mark = w.mark()
        await w.load(B)
        await w.slot.unload()

        assert ready_heard_before_event == [True]
        changes = [s for i, s in enumerate(w.states_since(mark)) if i == 0 or s != w.states_since(mark)[i - 1]]
        assert changes == [ModelState.STOPPING, ModelState.LOADING, ModelState.READY, ModelState.STOPPING,
                           ModelState.EMPTY]

    run(story)


def test_the_latest_load_wins_and_the_earlier_one_is_superseded_leaving_one_child():
    async def story(w: World) -> None:
        w.launcher.hold_ready = True  # A stays LOADING until we say so: no race with the clock
        first = w.slot.load(A, LoadOptions())
        started = await events_until(first, LoadPhase.STARTING)
        a_pid = started[-1].model.pid if started[-1].model else 0

        second = asyncio.create_task(w.load(B))
        error = await error_of(drain(first))
        w.launcher.ready.set()
        await second

        assert isinstance(error, Superseded) and "superseded" in str(error)
        assert [e.pid for e in w.launcher.alive()] == [w.slot.status().pid] != [a_pid]
        assert w.slot.status().path == B and w.slot.status().state is ModelState.READY

    run(story)


def test_simultaneous_loads_leave_exactly_one_child_and_the_others_superseded():
    async def story(w: World) -> None:
        async def attempt(path: str) -> object:
            try:
                return (await w.load(path))[-1].model
            except LlamagateError as error:
                return error

        outcomes = await asyncio.gather(attempt(A), attempt(B), attempt(C))

        winners = [o for o in outcomes if isinstance(o, ModelInfo)]
        assert [type(o) for o in outcomes if not isinstance(o, ModelInfo)] == [Superseded] * (3 - len(winners))
        assert winners and winners[-1].path == C  # the last to arrive wins
        assert [e.pid for e in w.launcher.alive()] == [w.slot.status().pid]

    run(story)


def test_a_request_that_arrived_later_wins_even_when_it_is_ready_first():
    async def story(w: World) -> None:
        entered, gate = threading.Event(), threading.Event()
        real_inspect = w.inspector.inspect

        def inspect(path: str):  # A's header read is slow (a cold disk)
            if path == A:
                entered.set()
                gate.wait(5)
            return real_inspect(path)

        w.inspector.inspect = inspect  # type: ignore[method-assign]
        first = asyncio.create_task(w.load(A))
        await asyncio.to_thread(entered.wait, 5)  # A has arrived and is reading
        await w.load(B)
        gate.set()
        error = await error_of(first)

        assert isinstance(error, Superseded)
        assert [s.model_path for s in w.launcher.launched] == [B]
        assert w.slot.status().path == B

    run(story)


def test_bad_options_and_a_missing_engine_fail_before_the_loaded_model_is_touched():
    """Defect 2: everything that can be checked is checked before the old model stops."""
    async def story(w: World) -> None:
        await w.load(A)
        a = w.launcher.alive()[0]
        mark = w.mark()

        bad_options = await error_of(w.load(B, parallel=0))
        missing_file = await error_of(w.load("/models/nope.gguf"))
        w.launcher.check_error = EngineNotFound("no llama-server found; looked in: /x")
        no_engine = await error_of(w.load(B))

        assert isinstance(bad_options, InvalidArgument) and "parallel" in str(bad_options)
        assert "nope.gguf" in str(missing_file)
        assert isinstance(no_engine, EngineNotFound)
        assert a.stops == 0 and w.launcher.alive() == [a] and len(w.launcher.launched) == 1
        assert w.states_since(mark) == [] and w.slot.status().state is ModelState.READY

    run(story)


def test_defect_2_a_binary_that_cannot_run_fails_the_load_and_keeps_the_old_model():
    async def story(w: World) -> None:
        await w.load(A)
        a = w.launcher.alive()[0]
        w.launcher.check_error = EngineFailed("cannot start /opt/llama-server: [Errno 8] Exec format error")

        error = await error_of(w.load(B))

        assert isinstance(error, EngineFailed) and "/opt/llama-server" in str(error)
        assert a.stops == 0 and w.slot.status().pid == a.pid and w.slot.status().state is ModelState.READY
        assert [e async for e in w.slot.generate(QUESTION)]

    run(story)


def test_defect_18_a_model_llama_server_rejects_brings_the_previous_model_back():
    async def story(w: World) -> None:
        await w.load(A)
        mark = w.mark()
        w.launcher.reject_next = ["llama_model_load: error loading model: tensor 'output.weight' has wrong shape"]

        error = await error_of(w.load(B))
        await w.settle()

        assert isinstance(error, EngineFailed)
        assert "wrong shape" in str(error) and "a.gguf" not in str(error).split("wrong shape")[0]
        assert "previous model a is being started again" in str(error)
        status = w.slot.status()
        assert (status.state, status.path) == (ModelState.READY, A)
        assert [e.pid for e in w.launcher.alive()] == [status.pid]
        assert w.states_since(mark)[-1] is ModelState.READY
        assert [s.model_path for s in w.launcher.launched] == [A, B, A]

    run(story)


def test_a_failed_load_with_nothing_to_bring_back_leaves_the_slot_failed_saying_why():
    async def story(w: World) -> None:
        w.launcher.reject_next = ["error loading model"]

        error = await error_of(w.load(A))
        await w.settle()

        assert isinstance(error, EngineFailed)
        status = w.slot.status()
        assert status.state is ModelState.FAILED and "error loading model" in status.last_error
        assert w.launcher.alive() == []
        no_model = await error_of(w.ask())
        assert isinstance(no_model, NoModelLoaded) and "error loading model" in str(no_model)

    run(story)


def test_a_spawn_that_fails_after_the_old_model_stopped_brings_it_back():
    async def story(w: World) -> None:
        await w.load(A)
        a = w.launcher.alive()[0]
        w.launcher.launch_error = EngineFailed("cannot start llama-server: [Errno 12] Cannot allocate memory")

        error = await error_of(w.load(B))
        await w.settle()

        assert "Cannot allocate memory" in str(error) and "being started again" in str(error)
        assert a.exit is not None  # B's spawn came after A was stopped
        assert w.slot.status().path == A and w.slot.status().state is ModelState.READY
        assert [e.pid for e in w.launcher.alive()] == [w.slot.status().pid]

    run(story)


def test_defect_1_cancelling_a_load_while_the_old_model_stops_leaves_no_ghost_ready():
    async def story(w: World) -> None:
        await w.load(A)
        a = w.launcher.alive()[0]
        w.launcher.stop_gate = asyncio.Event()  # SIGTERM takes its time
        a._stop_gate = w.launcher.stop_gate

        loading = asyncio.create_task(w.load(B))
        await until(lambda: w.slot.status().state is ModelState.STOPPING)
        loading.cancel()  # the client goes away while A is being stopped
        with pytest.raises(asyncio.CancelledError):
            await loading
        w.launcher.stop_gate.set()
        await until(lambda: w.slot.status().state in (ModelState.READY, ModelState.EMPTY, ModelState.FAILED))
        await w.settle()

        # The cancelled load restores the model it replaced: READY with a new,
        # live child that answers -- never READY with the dead one.
        status = w.slot.status()
        assert status.state is ModelState.READY and status.path == A
        assert [e.pid for e in w.launcher.alive()] == [status.pid] and status.pid != a.pid
        assert a.exit is not None and w.heard[-1].state is ModelState.READY
        assert [e async for e in w.slot.generate(QUESTION)]

    run(story)


def test_cancelling_a_load_with_nothing_before_it_empties_the_slot_and_stops_its_child():
    async def story(w: World) -> None:
        w.launcher.hold_ready = True
        events = w.slot.load(A, LoadOptions())
        await events_until(events, LoadPhase.STARTING)

        await events.aclose()  # the caller goes away
        await until(lambda: w.slot.status().state is ModelState.EMPTY)

        assert w.launcher.alive() == [] and w.launcher.engines[0].stops == 1
        assert w.slot.status().last_error == ""

    run(story)


def test_unload_during_a_load_supersedes_it_and_leaves_nothing_running():
    async def story(w: World) -> None:
        w.launcher.hold_ready = True
        events = w.slot.load(A, LoadOptions())
        await events_until(events, LoadPhase.STARTING)

        result = await w.slot.unload()
        error = await error_of(drain(events))

        assert result.was_loaded and result.pid == w.launcher.engines[0].pid
        assert isinstance(error, Superseded)
        assert w.launcher.alive() == [] and w.slot.status().state is ModelState.EMPTY

    run(story)


# ------------------------------------------------------------------ crashes


def test_a_crashed_child_fails_the_slot_says_why_and_health_hears_it():
    async def story(w: World) -> None:
        await w.load(A)
        w.launcher.alive()[0].crash("killed by SIGKILL")
        await until(lambda: w.slot.status().state is ModelState.FAILED)
        await w.settle()

        status = w.slot.status()
        assert "exited unexpectedly (killed by SIGKILL)" in status.last_error and status.pid == 0
        assert w.heard[-1].state is ModelState.FAILED
        error = await error_of(w.ask())
        assert isinstance(error, NoModelLoaded) and "exited unexpectedly" in str(error)

    run(story)


def test_defect_12_after_a_crash_and_an_unload_generate_says_no_model_is_loaded():
    async def story(w: World) -> None:
        await w.load(A)
        w.launcher.alive()[0].crash()
        await until(lambda: w.slot.status().state is ModelState.FAILED)

        await w.slot.unload()
        error = await error_of(w.ask())

        assert isinstance(error, NoModelLoaded) and "no model is loaded" in str(error)
        assert w.slot.status().last_error == "" and w.slot.status().state is ModelState.EMPTY

    run(story)


def test_a_crash_mid_generation_ends_it_as_unavailable_saying_the_engine_died():
    async def story(w: World) -> None:
        await w.load(A)
        engine, generation = await held_generation(w)

        engine.crash("killed by SIGKILL")
        error = await error_of(generation)

        assert type(error) is EngineFailed and "exited unexpectedly" in str(error) and "SIGKILL" in str(error)

    run(story)


# ------------------------------------------------------------------ generations


def test_generate_sends_the_domains_call_and_streams_deltas_then_done():
    async def story(w: World) -> None:
        await w.load(A, context_length=2048)
        engine = w.launcher.alive()[0]
        engine.chat.script = reply("Hel", "lo")

        events = await w.ask(GenerateRequest((text_message(Role.USER, "hi"),), Sampling(temperature=0.0)))

        assert [e.text for e in events if isinstance(e, ContentDelta)] == ["Hel", "lo"]
        assert isinstance(events[-1], Done) and events[-1].usage.completion_tokens == 2
        call = engine.chat.calls[0]
        assert call.sampling.temperature == 0.0 and call.sampling.top_k == 20
        assert call.max_tokens == 2048  # unset: the context, so no answer is cut short

    run(story)


def test_max_tokens_above_what_a_slot_holds_is_refused_before_the_engine_hears_of_it():
    async def story(w: World) -> None:
        await w.load(A, context_length=2048, parallel=2)  # 1024 tokens a slot
        engine = w.launcher.alive()[0]

        refused = await error_of(w.ask(GenerateRequest((text_message(Role.USER, "hi"),), Sampling(max_tokens=1025))))

        assert isinstance(refused, InvalidArgument) and refused.field == "sampling.max_tokens"
        assert "1024" in str(refused) and engine.chat.calls == []
        engine.chat.script = reply("ok")
        await w.ask(GenerateRequest((text_message(Role.USER, "hi"),), Sampling(max_tokens=1024)))
        assert engine.chat.calls[0].max_tokens == 1024

    run(story)


def test_count_tokens_asks_the_engine_and_says_what_a_slot_holds():
    async def story(w: World) -> None:
        not_loaded = await error_of(w.slot.count_tokens(QUESTION))
        await w.load(A, context_length=2048, parallel=2)
        engine = w.launcher.alive()[0]

        tokens, holds = await w.slot.count_tokens(GenerateRequest((text_message(Role.USER, "three words here"),)))
        bad = await error_of(w.slot.count_tokens(GenerateRequest(())))

        assert isinstance(not_loaded, NoModelLoaded)
        assert (tokens, holds) == (3 + 3, 1024)  # the fake template: 3 around a message, 1 a word
        assert engine.chat.calls[0].messages[0].text == "three words here"
        assert isinstance(bad, InvalidArgument) and bad.field == "messages" and len(engine.chat.calls) == 1

    run(story)


@pytest.mark.parametrize(("act", "reason"), [("unload", "was unloaded"), ("replace", "replaced by a later load")])
def test_defect_11_unloading_or_replacing_the_model_mid_generation_aborts_it_saying_why(act, reason):
    async def story(w: World) -> None:
        await w.load(A)
        _, generation = await held_generation(w)

        if act == "unload":
            await w.slot.unload()
        else:
            await w.load(B)
        error = await error_of(generation)

        assert isinstance(error, Aborted) and reason in str(error) and "model a " in str(error)

    run(story)


def test_two_generations_overlap_on_one_engine():
    async def story(w: World) -> None:
        await w.load(A, parallel=2)
        engine = w.launcher.alive()[0]
        engine.chat.hold = asyncio.Event()
        both = asyncio.gather(w.ask(), w.ask())
        await until(lambda: engine.chat.streaming == 2)  # both in flight at once
        engine.chat.hold.set()

        results = await both

        assert all(isinstance(r[-1], Done) for r in results)

    run(story)


def test_generate_while_loading_or_empty_is_refused_with_the_state_in_words():
    async def story(w: World) -> None:
        empty = await error_of(w.ask())
        w.launcher.hold_ready = True
        events = w.slot.load(A, LoadOptions())
        await events_until(events, LoadPhase.STARTING)
        loading = await error_of(w.ask())
        w.launcher.ready.set()
        async for _ in events:
            pass

        assert isinstance(empty, NoModelLoaded) and "no model is loaded" in str(empty)
        # Retryable: the same call succeeds once the load is done.
        assert isinstance(loading, NotReady) and "is loading" in str(loading) and loading.retry_after_s

    run(story)


# ------------------------------------------------------------------ the event loop


def test_defect_13_the_engine_check_and_the_header_read_run_off_the_event_loop():
    """Each blocking step waits for the event loop to answer it: if it ran on
    the loop, the answer could never come and the step would time out."""
    async def story(w: World) -> None:
        loop = asyncio.get_running_loop()
        answered: list[bool] = []

        def blocking_round_trip() -> None:
            pong = threading.Event()
            loop.call_soon_threadsafe(pong.set)
            answered.append(pong.wait(2))

        w.launcher.check = blocking_round_trip  # type: ignore[method-assign]
        inspect = w.inspector.inspect

        def inspect_blocking(path: str):
            blocking_round_trip()
            return inspect(path)

        w.inspector.inspect = inspect_blocking  # type: ignore[method-assign]
        await w.load(A)

        assert answered == [True, True]

    run(story)


def test_planning_stops_when_its_caller_goes_away(monkeypatch):
    """The planner runs in a thread; a cancelled PlanModel tells it to stop."""
    import llamagate.application.slot as slot_module

    asked: list[bool] = []
    real_plan_load = slot_module.plan_load

    def recording_plan_load(*args, **kwargs):
        asked.append(kwargs["should_stop"]())
        return real_plan_load(*args, **kwargs)

    monkeypatch.setattr(slot_module, "plan_load", recording_plan_load)

    async def story(w: World) -> None:
        started, release = threading.Event(), threading.Event()
        gpus = w.memory.gpus

        def hanging_gpus():  # the GPU probe hangs in the planning thread
            started.set()
            release.wait(5)
            return gpus()

        w.memory.gpus = hanging_gpus  # type: ignore[method-assign]
        planning = asyncio.create_task(w.slot.plan(A, LoadOptions()))
        await asyncio.to_thread(started.wait, 5)
        planning.cancel()
        with pytest.raises(asyncio.CancelledError):
            await planning
        release.set()
        await until(lambda: bool(asked))

        assert asked == [True]

    run(story)


def test_a_cancelled_plan_raises_cancelled_inside_the_planner():
    from llamagate.domain.load_plan import plan_load

    with pytest.raises(Cancelled):
        plan_load(model_facts(A), LoadOptions(), [], 16 << 30, should_stop=lambda: True)


def test_a_bug_during_a_load_is_an_internal_error_and_leaves_the_slot_consistent():
    async def story(w: World) -> None:
        await w.load(A)
        w.launcher.launch_error = RuntimeError("a bug in the launcher")

        error = await error_of(w.load(B))
        await w.settle()

        assert isinstance(error, Internal) and "a bug in the launcher" in str(error)
        assert "being started again" in str(error)
        assert w.slot.status().state is ModelState.READY and w.slot.status().path == A
        assert [e.pid for e in w.launcher.alive()] == [w.slot.status().pid]

    run(story)


# ------------------------------------------------------------------ restarts (issue 8)


def test_a_crashed_child_is_restarted_with_the_same_launch_and_serves_again():
    async def story(w: World) -> None:
        await w.load(A, context_length=2048)
        first = w.launcher.alive()[0]
        mark = w.mark()

        first.crash("killed by SIGKILL")
        await until(lambda: w.slot.status().state is ModelState.READY and w.slot.status().restarts == 1)
        events = await w.ask()
        await w.slot.announced()  # every change heard by the listeners

        changes = [s for i, s in enumerate(w.states_since(mark)) if i == 0 or s is not w.states_since(mark)[i - 1]]
        assert changes == [ModelState.FAILED, ModelState.LOADING, ModelState.READY]
        assert w.launcher.launched[1] == w.launcher.launched[0]  # the same plan, not a new one
        assert "killed by SIGKILL" in w.slot.status().last_error  # why the restart was needed
        assert isinstance(events[-1], Done) and len(w.launcher.alive()) == 1

    run(story, CRASH_RESTARTS)


def test_a_frozen_child_is_noticed_stopped_and_restarted():
    async def story(w: World) -> None:
        await w.load(A)
        frozen, generation = await held_generation(w)

        frozen.freeze()
        error = await error_of(generation)
        await until(lambda: w.slot.status().state is ModelState.READY and w.slot.status().restarts == 1)

        assert type(error) is EngineFailed and "stopped answering" in str(error)
        assert frozen.exit is not None and frozen.stop_graces == [1.0]  # killed, not left behind
        assert "stopped answering" in w.slot.status().last_error
        assert ModelState.FAILED in w.states and w.launcher.alive() != [frozen]

    run(story, RESTARTS)


def test_when_restarts_keep_failing_the_cap_leaves_the_model_failed_saying_why():
    async def story(w: World) -> None:
        await w.load(A)
        w.launcher.reject_next = ["error: out of memory", "error: out of memory"]

        w.launcher.alive()[0].crash("killed by SIGKILL")
        await until(lambda: "gave up" in w.slot.status().last_error)
        await w.settle()

        status = w.slot.status()
        assert status.state is ModelState.FAILED and status.restarts == 2 and status.pid == 0
        assert "out of memory" in status.last_error and "LLAMAGATE_RESTART_MAX" in status.last_error
        assert len(w.launcher.launched) == 3 and w.launcher.alive() == []
        error = await error_of(w.ask())
        assert isinstance(error, NoModelLoaded) and "gave up" in str(error)

    run(story, CRASH_RESTARTS)


def test_generate_while_a_restart_waits_is_retryable_and_an_unload_cancels_the_restart():
    slow = SlotSettings(restart=RestartPolicy(backoff_s=30.0, max_backoff_s=30.0))

    async def story(w: World) -> None:
        await w.load(A)
        w.launcher.alive()[0].crash()
        await until(lambda: w.slot.status().state is ModelState.FAILED)

        waiting = await error_of(w.ask())
        await w.slot.unload()
        await w.settle()

        assert isinstance(waiting, NotReady) and "restarting in 30 s" in str(waiting)
        assert w.slot.status().state is ModelState.EMPTY and len(w.launcher.launched) == 1

    run(story, slow)


def test_a_load_that_began_before_a_crash_is_not_refused_by_the_restart():
    async def story(w: World) -> None:
        await w.load(A)
        w.launcher.hold_ready = True  # the restart (if any) and the load both wait at health
        events = w.slot.load(B, LoadOptions())
        first = await anext(events)  # the load has its ticket and is reading B's header
        w.launcher.alive()[0].crash()
        w.launcher.ready.set()
        rest = [event async for event in events]

        assert first.phase is LoadPhase.RESOLVING and rest[-1].phase is LoadPhase.READY
        assert w.slot.status().path == B and w.slot.status().restarts == 0

    run(story, CRASH_RESTARTS)


# ------------------------------------------------------------------ the queue (issue 8)


def test_beyond_the_slots_requests_queue_and_past_the_queue_they_are_refused_at_once():
    async def story(w: World) -> None:
        await w.load(A, parallel=2)
        engine = w.launcher.alive()[0]
        engine.chat.hold = asyncio.Event()
        running = [asyncio.create_task(w.ask()) for _ in range(2)]
        await until(lambda: engine.chat.streaming == 2)
        queued = asyncio.create_task(w.ask())
        await asyncio.sleep(0.01)

        refused = await error_of(w.ask())
        assert engine.chat.streaming == 2 and not queued.done()  # never more than the slots upstream
        engine.chat.hold.set()
        results = await asyncio.gather(*running, queued)

        assert isinstance(refused, Overloaded) and refused.retry_after_s is not None and refused.retry_after_s > 0
        assert "LLAMAGATE_QUEUE_SIZE" in str(refused)
        assert all(isinstance(events[-1], Done) for events in results) and len(engine.chat.calls) == 3

    run(story, SlotSettings(restart=RestartPolicy(enabled=False), queue_size=1))


def test_a_cancelled_waiter_gives_up_its_place_and_an_unload_ends_those_still_waiting():
    async def story(w: World) -> None:
        await w.load(A, parallel=1)
        engine = w.launcher.alive()[0]
        engine.chat.hold = asyncio.Event()
        running = asyncio.create_task(w.ask())
        await until(lambda: engine.chat.streaming == 1)
        leaving = asyncio.create_task(w.ask())
        await asyncio.sleep(0.01)
        leaving.cancel()
        staying = asyncio.create_task(w.ask())  # the place the cancelled one left
        await asyncio.sleep(0.01)

        await w.slot.unload()

        assert leaving.cancelled()
        assert isinstance(await error_of(staying), Aborted)
        assert isinstance(await error_of(running), Aborted)
        assert len(engine.chat.calls) == 1  # the waiters never reached the engine

    run(story, SlotSettings(restart=RestartPolicy(enabled=False), queue_size=1))


# ------------------------------------------------------------------ batch size (issue 8)


def progress(*steps: tuple[int, float]) -> list[ChatChunk]:
    return [ChatChunk(progress=PromptStep(tokens, ms)) for tokens, ms in steps] + reply("ok")


def test_the_batch_is_the_device_prior_then_follows_the_measured_prompt_speed():
    async def story(w: World) -> None:
        sizes = []

        async def measure(script: list[ChatChunk], **options: object) -> None:
            await w.load(A, context_length=8192, **options)
            sizes.append(w.launcher.launched[-1].batch_size)
            w.launcher.alive()[0].chat.script = script
            await w.ask()

        # Early in the context, fast: never trusted to raise the batch above the estimate.
        await measure(progress((0, 0.0), (300, 100.0)))
        # Late in the context (past half of the 8192 a slot holds): 300 tokens in 1 s.
        await measure(progress((4000, 0.0), (4300, 1000.0)))
        # Early and slow (150 tokens/s): a slow start means a slower end, so it lowers the batch.
        await measure(progress((0, 0.0), (150, 1000.0)))
        await measure([], batch_size=1000)  # the caller's choice wins
        await w.load(A, context_length=8192)
        sizes.append(w.launcher.launched[-1].batch_size)

        # A 1 s cancel bound allows 0.4 s per decode. First the estimate for a
        # SmolLM2-shaped model on 1 thread at a full 8192-token slot (~0.9
        # GFLOP a token: 44 tokens/s, 18 tokens, the floor of 32), then 0.4 s
        # at 300 tokens/s, then 0.4 s at the blend of 300 and 150.
        assert sizes == [32, 32, 96, 1000, 64]

    run(story)
