"""The one model this service runs: load, unload, status, generate.

Every load and unload bumps a generation number under the lock. A load
checks it after each step that can wait, so the latest call always wins and
an earlier load that lost the race stops its own child (SPEC §8, §11).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import PurePath

from llamagate.domain.capabilities import merge_server_caps
from llamagate.domain.chat import GenerateEvent, GenerateRequest
from llamagate.domain.errors import EngineFailed, InvalidArgument, NoModelLoaded, Superseded
from llamagate.domain.generation import StreamFolder, chat_body, validate
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.launch import LaunchSpec, launch_from_plan
from llamagate.domain.load_plan import LoadPlan, check_plannable, plan_load
from llamagate.domain.model import LoadEvent, LoadOptions, LoadPhase, ModelFacts, ModelInfo, ModelState
from llamagate.domain.ports import ChatEngine, EngineLauncher, EngineProcess, MemoryProbe, ModelInspector
from llamagate.domain.shards import model_id


ReadinessListener = Callable[[bool], Awaitable[None]]


class ModelManager:
    def __init__(
        self, inspector: ModelInspector, launcher: EngineLauncher, chat: ChatEngine, memory: MemoryProbe
    ) -> None:
        self._inspector = inspector
        self._launcher = launcher
        self._chat = chat
        self._memory = memory
        self._lock = asyncio.Lock()
        self._generation = 0
        self._engine: EngineProcess | None = None
        self._info = ModelInfo()
        self._last_failure = ""
        self._readiness: list[ReadinessListener] = []
        self._exit_watch: asyncio.Task | None = None

    def status(self) -> ModelInfo:
        return replace(self._info, last_error=self._last_failure) if self._last_failure else self._info

    def on_readiness(self, listener: ReadinessListener) -> None:
        """Call ``listener(True)`` when a model becomes ready, ``(False)`` when it stops being."""
        self._readiness.append(listener)

    async def _set_ready(self, ready: bool) -> None:
        for listener in self._readiness:
            await listener(ready)

    async def plan(self, path: str, options: LoadOptions, gpus: list[GpuInfo] | None = None) -> LoadPlan:
        """What a load would do now; ``gpus`` plans for those instead of ours."""
        _check_options(options)
        facts, projector = await self._inspect(path, options)
        return await asyncio.to_thread(self._plan, facts, options, projector, gpus)

    async def _inspect(self, path: str, options: LoadOptions) -> tuple[ModelFacts, int]:
        facts = await asyncio.to_thread(self._inspector.inspect, path)
        projector = 0
        if options.mmproj_path:
            projector = (await asyncio.to_thread(self._inspector.inspect, options.mmproj_path)).size_bytes
        return facts, projector

    def _plan(self, facts: ModelFacts, options: LoadOptions, projector: int, gpus: list[GpuInfo] | None) -> LoadPlan:
        simulated = gpus is not None
        found = gpus if simulated else self._memory.gpus()
        host = 0 if found else self._memory.host_free_bytes()
        return plan_load(facts, options, found, host, projector_bytes=projector, simulated=simulated)

    async def load(self, path: str, options: LoadOptions) -> AsyncIterator[LoadEvent]:
        _check_options(options)
        yield LoadEvent(LoadPhase.RESOLVING, f"reading the GGUF header of {path}")
        # Bad input fails here, before the loaded model is touched.
        facts, projector = await self._inspect(path, options)
        check_plannable(facts, options)
        async with self._lock:
            self._generation += 1
            generation = self._generation
            await self._stop_engine()  # free its memory before measuring what is free
            self._info = ModelInfo(path=facts.path, id=model_id(PurePath(facts.path).name), state=ModelState.LOADING)
            await self._set_ready(False)
        ready = False
        try:
            load_plan = await asyncio.to_thread(self._plan, facts, options, projector, None)
            info, spec = launch_from_plan(load_plan, options)
            yield LoadEvent(LoadPhase.PLANNING, _plan_message(info, load_plan), plan=load_plan)
            engine = await self._spawn(generation, info, spec, options.chat_template)
            yield LoadEvent(LoadPhase.STARTING, f"llama-server started (pid {engine.pid})", model=self._info)
            async for event in self._progress(generation, engine, facts.size_bytes):
                yield event
            info = await self._ready(generation, engine)
            ready = True
            yield LoadEvent(LoadPhase.READY, f"{info.id} is ready", facts.size_bytes, facts.size_bytes, info)
        finally:
            if not ready:  # failed, cancelled by the caller, or superseded
                await self._abandon(generation)

    async def _spawn(self, generation: int, info: ModelInfo, spec: LaunchSpec, template: str) -> EngineProcess:
        async with self._lock:
            self._check_current(generation)
            await self._stop_engine()  # a concurrent load may have slipped a child in
            spec = replace(spec, port=self._launcher.free_port())
            engine = await self._launcher.launch(spec, chat_template=template)
            self._engine = engine
            self._info = replace(info, pid=engine.pid)
            return engine

    async def _watch(self, generation: int, engine: EngineProcess) -> AsyncIterator[int]:
        try:
            async for resident in engine.watch_until_ready():
                self._check_current(generation)
                yield resident
        except EngineFailed:
            self._check_current(generation)  # killed by a later load: say so instead
            raise

    async def _progress(self, generation: int, engine: EngineProcess, total: int) -> AsyncIterator[LoadEvent]:
        """LOADING events, one per whole percent of the weights resident (SPEC §10)."""
        last_percent = -1
        async for resident in self._watch(generation, engine):
            loaded = min(resident, total)
            percent = loaded * 100 // total if total else 100
            if percent != last_percent:
                last_percent = percent
                message = f"loading weights: {percent}% ({loaded >> 20} of {total >> 20} MiB resident)"
                yield LoadEvent(LoadPhase.LOADING, message, loaded, total)

    async def _ready(self, generation: int, engine: EngineProcess) -> ModelInfo:
        props = await self._chat.props(engine.endpoint)
        async with self._lock:
            self._check_current(generation)
            caps = merge_server_caps(self._info.capabilities, props)
            self._info = replace(self._info, capabilities=caps, state=ModelState.READY)
            self._last_failure = ""
            self._exit_watch = asyncio.create_task(self._watch_exit(generation, engine))
            await self._set_ready(True)
            return self._info

    async def _watch_exit(self, generation: int, engine: EngineProcess) -> None:
        """A ready child that dies on its own (OOM killer, crash) empties the slot."""
        how = await engine.wait_exit()
        async with self._lock:
            if generation == self._generation and self._engine is engine:
                self._engine = None
                self._info = ModelInfo()
                self._last_failure = f"llama-server exited unexpectedly ({how.splitlines()[0]}); load the model again"
                await self._set_ready(False)

    async def _abandon(self, generation: int) -> None:
        async with self._lock:
            if generation == self._generation:
                await self._stop_engine()
                self._info = ModelInfo()
                await self._set_ready(False)

    def _check_current(self, generation: int) -> None:
        if generation != self._generation:
            raise Superseded("the load was superseded by a later LoadModel or UnloadModel")

    async def unload(self) -> tuple[bool, int]:
        """Stop the model or the load in progress. Returns (was_loaded, pid)."""
        async with self._lock:
            self._generation += 1
            was_loaded = self._info.state is not ModelState.EMPTY
            pid = self._engine.pid if self._engine else 0
            await self._stop_engine()
            self._info = ModelInfo()
            await self._set_ready(False)
            return was_loaded, pid

    async def _stop_engine(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.stop()

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateEvent]:
        info, engine = self._info, self._engine
        if info.state is not ModelState.READY or engine is None:
            raise NoModelLoaded(self._last_failure or _not_ready_message(info))
        validate(request, info.capabilities)
        body = chat_body(request, info.capabilities, info.context_length)
        folder = StreamFolder()
        async for chunk in self._chat.stream_chat(engine.endpoint, body):
            for event in folder.feed(chunk):
                yield event
        for event in folder.finish():
            yield event


def _check_options(options: LoadOptions) -> None:
    if options.parallel < 1:
        raise InvalidArgument(f"parallel must be at least 1, got {options.parallel}")
    if options.threads < 0:
        raise InvalidArgument(f"threads must be 0 (automatic) or positive, got {options.threads}")


def _not_ready_message(info: ModelInfo) -> str:
    if info.state is ModelState.LOADING:
        return f"model {info.id} is still loading; wait for LoadModel to report READY"
    return "no model is loaded; call LoadModel first"


def _plan_message(info: ModelInfo, load_plan: LoadPlan) -> str:
    plan = load_plan.plan
    where = f"GPU {','.join(map(str, plan.gpus))}" if plan.gpus else ("--fit on" if not plan.fits else "CPU")
    return (
        f"{info.architecture} model: context {info.context_length} (native {info.native_context_length}),"
        f" {info.parallel} slot(s), KV cache {info.cache_type.value}, on {where}; " + "; ".join(plan.reasons)
    )
