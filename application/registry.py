"""Several models at once: a model slot per id, placed by planned memory (issue 12).

Each model id has its own `ModelSlot` (its child, state machine, queue,
restarts). The registry decides what may be resident together: a load is
planned against what is free once the other models' planned footprints are
counted (and a host memory budget, when one is set); when it does not fit,
the least recently used idle, unpinned models are evicted, only as many as
the planner says it needs. Placement decisions are made one at a time, and a
load's footprint is reserved from its decision until its own plan stands.

Configured models (`ServiceConfig`) may be loaded on demand by the first
request naming them (concurrent requests wait for one load), and unloaded
after an idle TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from pathlib import PurePath

from llamagate.application.slot import ModelSlot, ModelSource, Prepared
from llamagate.domain.errors import (
    InsufficientResources,
    InvalidArgument,
    ModelNotFound,
    NoModelLoaded,
)
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.hub_load import HubModel
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.load_plan import LoadPlan, plan_load
from llamagate.domain.model_config import ModelSpec, ServiceConfig
from llamagate.domain.model_info import LoadEvent, LoadPhase, ModelInfo
from llamagate.domain.model_state import ModelState
from llamagate.domain.placement import (
    HOST,
    Footprint,
    Resident,
    describe_evictions,
    evictions,
    footprint,
    gpu,
    total,
    with_freed,
)
from llamagate.domain.ports import MemoryProbe
from llamagate.domain.shards import model_id

log = logging.getLogger(__name__)

SlotFactory = Callable[[MemoryProbe], ModelSlot]
ModelListener = Callable[[str, ModelInfo], object]

_REAP_EVERY_S = (0.05, 30.0)  # the idle-TTL check runs at a quarter of the shortest TTL, within these bounds


@dataclass(eq=False)
class _Entry:
    id: str
    slot: ModelSlot
    spec: ModelSpec | None = None  # configured in the service's config file
    reserved: dict[str, int] = field(default_factory=dict)  # a load's footprint until its own plan stands
    pending: asyncio.Task[None] | None = None  # an on-demand load that requests wait for
    loads: int = 0  # loads through the registry under way
    loaded_at: float = 0.0

    @property
    def pinned(self) -> bool:
        return self.spec is not None and self.spec.pinned

    @property
    def held(self) -> Footprint:
        return self.slot.footprint or self.reserved


@dataclass(frozen=True)
class ModelEntry:
    """One model as ListModels shows it."""

    id: str
    info: ModelInfo
    configured: bool
    pinned: bool
    on_demand: bool
    idle_ttl_s: float
    idle_for_s: float | None  # since its last request ended (or its load); None when not loaded
    held: dict[str, int]  # memory by device ("host", "gpu0", ...)
    in_flight: int


class _RegistryMemory:
    """The memory one slot's planner sees: the machine's, less what the other
    models hold or have reserved, and within the host budget."""

    def __init__(self, registry: ModelRegistry, owner: str) -> None:
        self._registry, self._owner = registry, owner

    @property
    def model(self) -> str:
        return self._owner

    def gpus(self) -> list[GpuInfo]:
        return self._registry.free_gpus(exclude=self._owner)

    def host_free_bytes(self) -> int:
        return self._registry.free_host(exclude=self._owner)


class ModelRegistry:
    def __init__(self, make_slot: SlotFactory, memory: MemoryProbe, config: ServiceConfig | None = None,
                 *, host_budget: int = 0, host_cache_bytes: int = 0) -> None:
        self._make_slot = make_slot
        self._memory = memory
        self._config = config or ServiceConfig(models=())
        self._budget = host_budget or self._config.host_memory_bytes
        self._cache = host_cache_bytes  # each model's host-side prompt cache, planned as host memory
        self._entries: dict[str, _Entry] = {}
        self._planner = make_slot(memory)  # prepares and plans; never loads
        self._placing = asyncio.Lock()  # one placement decision at a time
        self._listeners: list[ModelListener] = []
        self._reaper: asyncio.Task[None] | None = None
        for spec in self._config.models:
            self._entry(spec.id, spec)

    # ------------------------------------------------------------------ reading

    def on_change(self, listener: ModelListener) -> None:
        """``listener(id, info)`` (awaited if it returns an awaitable) after
        every change of any model's state, in order for each model."""
        self._listeners.append(listener)

    def ids(self) -> list[str]:
        return list(self._entries)

    def loaded(self) -> list[str]:
        return [e.id for e in self._entries.values() if e.slot.status().state is not ModelState.EMPTY]

    def entries(self) -> list[ModelEntry]:
        now = asyncio.get_running_loop().time()
        listed = []
        for e in self._entries.values():
            info = e.slot.status()
            loaded = info.state is not ModelState.EMPTY
            spec = e.spec
            listed.append(ModelEntry(
                id=e.id, info=replace(info, id=e.id), configured=spec is not None, pinned=e.pinned,
                on_demand=spec.on_demand if spec else False, idle_ttl_s=spec.idle_ttl_s if spec else 0.0,
                idle_for_s=max(0.0, now - self._last_use(e)) if loaded else None, held=dict(e.held),
                in_flight=e.slot.in_flight))
        return listed

    def status(self, name: str) -> ModelInfo:
        entry = self._named(name) if name else self._only(loaded_only=False)
        return replace(entry.slot.status(), id=entry.id) if entry else ModelInfo()

    # ------------------------------------------------------------------ memory

    def free_gpus(self, exclude: str = "") -> list[GpuInfo]:
        """Each GPU's free memory: a fresh probe less what loads not yet
        resident reserved, and never more than its total less what the other
        models' plans hold there."""
        others = self._others(exclude)
        reserved = total(e.reserved for e in others if not e.slot.footprint)
        held = total(e.held for e in others)
        free = []
        for g in self._memory.gpus():
            n = g.free_bytes - reserved.get(gpu(g.index), 0)
            if g.total_bytes:
                n = min(n, g.total_bytes - held.get(gpu(g.index), 0))
            free.append(replace(g, free_bytes=max(0, n)))
        return free

    def free_host(self, exclude: str = "") -> int:
        """System memory free for one more model: the machine's, and within the budget."""
        others = list(self._others(exclude))
        reserved = total(e.reserved for e in others if not e.slot.footprint).get(HOST, 0)
        free = max(0, self._memory.host_free_bytes() - reserved)
        if self._budget:
            free = min(free, max(0, self._budget - total(e.held for e in others).get(HOST, 0)))
        return free

    def _others(self, exclude: str) -> list[_Entry]:
        return [e for e in self._entries.values() if e.id != exclude]

    # ------------------------------------------------------------------ loading

    async def load(self, name: str, source: ModelSource | None, options: LoadOptions | None = None
                   ) -> AsyncGenerator[LoadEvent, None]:
        """Load ``source`` as model ``name`` ("" = the file's own id), or the
        configured model ``name`` when ``source`` is None, making room first."""
        if source is None:
            spec = self._spec(name)
            source, options = spec.source, spec.options
        options = options or LoadOptions()
        what = source if isinstance(source, str) else source.reference
        yield LoadEvent(LoadPhase.RESOLVING, f"resolving {what}")
        async with self._placing:
            prepared = await self._planner.prepare(source, options, for_load=True)
            entry = self._entry(name or _id_of(prepared))
            entry.loads += 1
            try:
                entry.slot.check_workers(prepared)  # before evicting anything for it
                await self._make_room(entry, prepared)
                entry.reserved = footprint(self._plan_here(entry, prepared).plan, self._cache)
            except BaseException:
                await self._settle(entry)
                raise
        try:
            async with contextlib.aclosing(entry.slot.load(prepared, options)) as events:
                async for event in events:
                    if event.phase is LoadPhase.READY:
                        entry.loaded_at = asyncio.get_running_loop().time()
                    yield replace(event, model=replace(event.model, id=entry.id)) if event.model else event
        finally:
            await self._settle(entry)

    async def _settle(self, entry: _Entry) -> None:
        """After a load through the registry: a model loaded by request that
        holds nothing once no load is under way (it failed, it was cancelled;
        its caller heard why) leaves the list."""
        entry.loads -= 1
        if entry.loads:
            return
        entry.reserved = {}
        state = entry.slot.status().state
        if (entry.spec is None and state in (ModelState.EMPTY, ModelState.FAILED) and not entry.slot.footprint
                and self._entries.get(entry.id) is entry):
            del self._entries[entry.id]
            await asyncio.shield(entry.slot.close())

    async def plan(self, source: ModelSource, options: LoadOptions, gpus: list[GpuInfo] | None = None,
                   name: str = "") -> tuple[LoadPlan, HubModel | None]:
        """What a load would do; with the memory there is (``gpus`` None), also
        which models it would evict, in its reasons."""
        prepared = await self._planner.prepare(source, options, for_load=False)
        hub = prepared.hub.model if prepared.hub else None
        if gpus is not None:  # a what-if: the GPUs described, nothing resident
            return await self._planner.plan_prepared(prepared, gpus), hub
        target = self._entries.get(name or _id_of(prepared))
        load_plan = self._plan_here(target, prepared)
        try:
            said = describe_evictions(self._victims(target, prepared))
        except InsufficientResources as error:
            said = f"a load now would fail: {error}"
        if said:
            load_plan = replace(load_plan, plan=replace(load_plan.plan, reasons=(*load_plan.plan.reasons, said)))
        return load_plan, hub

    async def _make_room(self, entry: _Entry, prepared: Prepared) -> None:
        """Evict what the load needs gone. Raises InsufficientResources when
        evicting every idle, unpinned model would not do (a model alone on the
        machine still goes to llama-server's --fit, as it always has)."""
        for victim in self._victims(entry, prepared):
            log.info("evicting %s (%d MiB, idle): %s needs its memory", victim.id, sum(victim.held.values()) >> 20,
                     entry.id)
            await self._entries[victim.id].slot.unload()
            self._forget_if_empty(self._entries[victim.id])

    def _plan_here(self, entry: _Entry | None, prepared: Prepared) -> LoadPlan:
        """The plan with the memory this entry's slot would see now (its own model's counted free)."""
        exclude = entry.id if entry else ""
        return plan_load(prepared.facts, prepared.options, self.free_gpus(exclude),
                         max(0, self.free_host(exclude) - self._cache), projector_bytes=prepared.projector_bytes,
                         workers=prepared.workers)

    def _victims(self, entry: _Entry | None, prepared: Prepared) -> tuple[Resident, ...]:
        own = entry.held if entry else {}  # its current model is replaced: its memory comes back
        residents = [Resident(e.id, e.held, self._last_use(e), e.slot.in_flight, e.pinned)
                     for e in self._entries.values() if e is not entry and e.held]
        exclude = entry.id if entry else ""
        gpus, host = self.free_gpus(exclude), self.free_host(exclude)

        def fits(freed: Footprint) -> bool:
            after, after_host = with_freed(gpus, host - self._cache, total([own, freed]))
            return plan_load(prepared.facts, prepared.options, after, after_host,
                             projector_bytes=prepared.projector_bytes, simulated=True, workers=prepared.workers).plan.fits

        chosen = evictions(residents, fits)
        if chosen is not None:
            return chosen
        if not residents:
            return ()  # alone, it is the single-model case: llama-server's --fit decides
        raise self._no_room(prepared, residents, gpus, host)

    def _no_room(self, prepared: Prepared, residents: list[Resident], gpus: list[GpuInfo],
                 host: int) -> InsufficientResources:
        alone = plan_load(prepared.facts, prepared.options, gpus, host, projector_bytes=prepared.projector_bytes,
                          workers=prepared.workers)
        needed = sum(footprint(alone.plan, self._cache).values())
        free = sum(g.free_bytes for g in gpus) + host
        idle = sum(sum(r.held.values()) for r in residents if r.evictable)
        kept = ", ".join(f"{r.id} ({'pinned' if r.pinned else f'{r.in_flight} request(s) in flight'})"
                         for r in residents if not r.evictable) or "none"
        where = "the GPUs and system memory" if gpus else (
            f"the host memory budget ({self._budget >> 20} MiB)" if self._budget else "system memory")
        return InsufficientResources(
            f"{_id_of(prepared)} needs {needed >> 20} MiB (weights and KV cache at context "
            f"{alone.plan.context_length}, prompt cache; a tenth more kept in reserve); {where} has "
            f"{free >> 20} MiB free, and evicting every idle, unpinned model would free {idle >> 20} MiB more; "
            f"kept: {kept}",
            reason="NO_ROOM", needed=needed, available=free + idle, where=where)

    # ------------------------------------------------------------------ serving

    async def slot_for(self, name: str) -> ModelSlot:
        """The slot a request naming ``name`` ("" = the only loaded model, or
        the default) goes to, loading a configured model on demand (one load
        for all who wait; each waits within its own deadline)."""
        entry = self._named(name) if name else self._only(loaded_only=True)
        if entry is None:
            raise NoModelLoaded("no model is loaded; call LoadModel first"
                                + (f", or name a configured model: {', '.join(self._configured())}"
                                   if self._configured() else ""))
        state = entry.slot.status().state
        if state is ModelState.READY or entry.spec is None or not entry.spec.on_demand:
            return entry.slot
        if state is ModelState.LOADING and entry.pending is None:
            await entry.slot.settled()  # a LoadModel is under way: wait for it
            return entry.slot
        if entry.pending is None or entry.pending.done():
            entry.pending = asyncio.create_task(self._load_on_demand(entry), name=f"on-demand load of {entry.id}")
            entry.pending.add_done_callback(_retrieved)  # its waiters may all have gone
        await asyncio.shield(entry.pending)
        return entry.slot

    async def _load_on_demand(self, entry: _Entry) -> None:
        log.info("loading %s on demand", entry.id)
        async with contextlib.aclosing(self.load(entry.id, None)) as events:
            async for event in events:
                log.debug("on-demand load of %s: %s", entry.id, event.message)

    def _named(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"no model {name!r}; loaded: {', '.join(self.loaded()) or 'none'}"
                                + (f"; configured: {', '.join(self._configured())}" if self._configured() else ""))
        return entry

    def _only(self, *, loaded_only: bool) -> _Entry | None:
        """The model a request that names none means: the default, else the only one loaded."""
        if self._config.default_model:
            return self._entries[self._config.default_model]
        loaded = [e for e in self._entries.values() if e.slot.status().state is not ModelState.EMPTY]
        if len(loaded) > 1:
            raise InvalidArgument(f"several models are loaded ({', '.join(e.id for e in loaded)}): name one",
                                  field="model")
        if loaded:
            return loaded[0]
        if not loaded_only and len(self._entries) == 1:
            return next(iter(self._entries.values()))
        return None

    def _configured(self) -> list[str]:
        return [e.id for e in self._entries.values() if e.spec is not None]

    def _spec(self, name: str) -> ModelSpec:
        spec = self._named(name).spec
        if spec is None:
            raise InvalidArgument(f"model {name!r} is not configured: give a source to load it", field="path")
        return spec

    # ------------------------------------------------------------------ unloading and idleness

    async def unload(self, name: str) -> tuple[str, int, bool]:
        """Stop model ``name`` ("" = the only loaded one): (id, pid, was_loaded)."""
        entry = self._named(name) if name else self._only(loaded_only=True)
        if entry is None:
            return "", 0, False
        result = await entry.slot.unload()
        self._forget_if_empty(entry)
        return entry.id, result.pid, result.was_loaded

    def start_reaper(self) -> None:
        """Unload models idle past their TTL, from now on."""
        ttls = [s.idle_ttl_s for s in self._config.models if s.idle_ttl_s > 0]
        if ttls and self._reaper is None:
            every = min(max(min(ttls) / 4, _REAP_EVERY_S[0]), _REAP_EVERY_S[1])
            self._reaper = asyncio.create_task(self._reap(every), name="idle-ttl")

    async def _reap(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            now = asyncio.get_running_loop().time()
            for entry in list(self._entries.values()):
                spec = entry.spec
                if (spec and spec.idle_ttl_s > 0 and entry.slot.status().state is ModelState.READY
                        and entry.slot.in_flight == 0 and now - self._last_use(entry) >= spec.idle_ttl_s):
                    log.info("unloading %s: idle for %.1f s (idle_ttl %g s)", entry.id,
                             now - self._last_use(entry), spec.idle_ttl_s)
                    await entry.slot.unload()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(e.slot.close() for e in self._entries.values()))
        await self._planner.close()

    # ------------------------------------------------------------------ entries

    def _entry(self, name: str, spec: ModelSpec | None = None) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = _Entry(name, self._make_slot(_RegistryMemory(self, name)), spec)
            entry.slot.on_change(functools.partial(self._announce, name))
        return entry

    async def _announce(self, name: str, info: ModelInfo) -> None:
        for listener in self._listeners:
            result = listener(name, replace(info, id=name))
            if inspect.isawaitable(result):
                await result

    def _forget_if_empty(self, entry: _Entry) -> None:
        """A model loaded by request, now empty, leaves the list (configured ones stay)."""
        if (entry.spec is None and entry.slot.status().state is ModelState.EMPTY and not entry.loads
                and self._entries.get(entry.id) is entry):
            del self._entries[entry.id]
            asyncio.get_running_loop().create_task(entry.slot.close())

    def _last_use(self, entry: _Entry) -> float:
        return max(entry.slot.last_used, entry.loaded_at)


def model_of(view: MemoryProbe) -> str:
    """The model id a slot factory is making its slot for ("" for the
    registry's own planner): what that slot reports its telemetry under."""
    return view.model if isinstance(view, _RegistryMemory) else ""


def _id_of(prepared: Prepared) -> str:
    return model_id(PurePath(prepared.facts.path).name)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("%s failed: %s", task.get_name(), task.exception())
