"""Models on RPC workers, through the model slot against fakes: the allowlist, probes before a load
and never while our engine holds a worker, a worker lost and come back (issue 15)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fakes import FakeInspector, FakeLauncher, FakeMemory, FakeWorkerProbe, model_facts
from test_slot import QUESTION, error_of, held_generation, until

from llamagate.application.rpc_workers import RpcWorkers
from llamagate.application.slot import ModelSlot, SlotSettings
from llamagate.application.watchdog import Watchdog
from llamagate.domain.errors import (
    NotReady,
    PermissionDenied,
    WorkerUnavailable,
    WorkerUnusable,
)
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.model_state import ModelState
from llamagate.domain.restart_policy import RestartPolicy
from llamagate.domain.rpc_workers import WorkerDevice, WorkerState

A, B = "/models/a.gguf", "/models/b.gguf"
W1, W2, ELSEWHERE = "127.0.0.1:50052", "127.0.0.1:50053", "10.9.9.9:50052"
GIB = 1 << 30
# restarts every few milliseconds, for as long as a test needs; no watchdog to fool
RETRYING = SlotSettings(restart=RestartPolicy(max_restarts=1000, backoff_s=0.002, max_backoff_s=0.01),
                        watchdog=Watchdog(interval_s=0.05, silent_after_s=10.0))


class Cluster:
    """Two slots sharing one RpcWorkers over two fake CPU workers, both allowed."""

    def __init__(self, settings: SlotSettings) -> None:
        self.probe = FakeWorkerProbe({W1: [WorkerDevice(0, 8 * GIB, 8 * GIB)], W2: [WorkerDevice(0, 8 * GIB, 8 * GIB)]})
        self.workers = RpcWorkers(self.probe, {W1, W2})
        self.launcher = FakeLauncher()
        inspector = FakeInspector(model_facts(A), model_facts(B))
        self.slot = ModelSlot(inspector, self.launcher, FakeMemory(gpus=[], host_free=GIB), settings,
                              workers=self.workers)
        self.other = ModelSlot(inspector, self.launcher, FakeMemory(gpus=[], host_free=GIB), settings,
                               workers=self.workers)

    async def ask(self) -> list[object]:  # as test_slot's World: held_generation uses it
        return [event async for event in self.slot.generate(QUESTION)]

    async def load(self, path: str, *workers: str, slot: ModelSlot | None = None) -> None:
        async for _ in (slot or self.slot).load(path, LoadOptions(rpc_workers=workers)):
            pass


def run(story: Callable[[Cluster], Awaitable[None]], settings: SlotSettings = RETRYING) -> None:
    async def main() -> None:
        cluster = Cluster(settings)
        try:
            await asyncio.wait_for(story(cluster), timeout=10)
        finally:
            await cluster.slot.close()
            await cluster.other.close()
            assert cluster.launcher.alive() == []

    asyncio.run(main())


def test_a_worker_the_operator_did_not_list_is_refused_before_anything_is_read_or_probed():
    async def story(c: Cluster) -> None:
        error = await error_of(c.load(A, W1, ELSEWHERE))
        assert isinstance(error, PermissionDenied) and "rpc_workers[1]" in str(error)
        assert c.probe.probes == [] and c.launcher.launched == []

    run(story)


def test_without_an_allowlist_no_worker_may_be_named():
    async def story(c: Cluster) -> None:
        bare = ModelSlot(FakeInspector(model_facts(A)), c.launcher, FakeMemory(gpus=[]))
        try:
            error = await error_of(c.load(A, W1, slot=bare))
        finally:
            await bare.close()
        assert isinstance(error, PermissionDenied) and "LLAMAGATE_RPC_WORKERS is empty" in str(error)

    run(story)


def test_a_load_over_workers_probes_them_plans_with_their_memory_and_starts_llama_server_on_them():
    async def story(c: Cluster) -> None:
        await c.load(A, W1, W2)

        spec = c.launcher.launched[0]
        assert spec.rpc_workers == (W1, W2) and spec.offload_all and spec.gpus == ()
        assert sorted(c.probe.probes) == [W1, W2]
        plan, _ = await c.slot.plan(A, LoadOptions(rpc_workers=(W1, W2)))
        assert sorted(c.probe.probes) == [W1, W2]  # held by our engine: never probed again
        assert [w.state for w in plan.workers] == [WorkerState.HELD] * 2
        assert all("serves model a" in w.detail and w.devices for w in plan.workers)
        assert [s.memory_is_ram for s in plan.plan.workers] == [True, True] and plan.plan.fits

    run(story)


def test_an_unreachable_worker_fails_a_load_before_the_loaded_model_is_touched():
    async def story(c: Cluster) -> None:
        await c.load(A)
        c.probe.down.add(W2)

        error = await error_of(c.load(B, W1, W2))

        assert isinstance(error, WorkerUnavailable) and error.metadata == {"worker": W2}
        assert f"RPC worker {W2} is unreachable" in str(error)
        assert c.slot.status().path == A and c.slot.status().state is ModelState.READY
        assert len(c.launcher.launched) == 1

    run(story)


def test_a_worker_another_model_holds_is_refused_naming_that_model():
    async def story(c: Cluster) -> None:
        await c.load(A, W1)
        error = await error_of(c.load(B, W1, slot=c.other))
        assert isinstance(error, WorkerUnusable) and "serves model a" in str(error)
        await c.slot.unload()  # released: the other slot may now use it
        await c.load(B, W1, slot=c.other)
        assert c.other.status().state is ModelState.READY

    run(story)


def test_a_lost_worker_fails_the_model_naming_it_and_the_restart_brings_it_back_once_the_worker_is():
    async def story(c: Cluster) -> None:
        await c.load(A, W1, W2)
        engine, generation = await held_generation(c)  # type: ignore[arg-type]  # a World in all it uses

        c.probe.down.add(W2)
        engine.crash("killed by SIGABRT")  # llama-server aborts when a worker goes
        error = await error_of(generation)
        await until(lambda: c.slot.status().restarts >= 3)  # restarts keep failing while the worker is down
        waiting = await error_of(c.slot.generate(QUESTION).__anext__())

        assert isinstance(error, WorkerUnavailable) and error.metadata == {"worker": W2}
        assert f"RPC worker {W2} is unreachable" in str(error) and error.retry_after_s
        assert isinstance(waiting, NotReady) and f"RPC worker {W2} is unreachable" in str(waiting)
        assert len(c.launcher.launched) == 1  # no llama-server started while a worker is down
        c.probe.down.discard(W2)
        await until(lambda: c.slot.status().state is ModelState.READY)
        assert c.launcher.launched[-1] == c.launcher.launched[0] and len(c.launcher.alive()) == 1

    run(story)
