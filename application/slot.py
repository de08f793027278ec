"""One model's life: load, unload, status and generate, as an explicit state machine.

States and the allowed transitions are ``domain.model_state``'s table; every
change goes through ``_transition``, which checks the table, logs, ends the
in-flight generations when the slot leaves READY, and tells listeners (after
the change is complete: listeners never run half-way through one).

Loads and unloads run as operations of a ``LatestWins`` runner: never two at
once, the latest request wins. Whatever can be checked before the loaded
model is touched is checked first (file, header, plan, engine binary: SPEC §8,
issue 7 defect 2). A load that does not finish for any reason other than a
later request (its caller went away, the engine rejected the model) starts
the model it replaced again, so the slot never ends up empty when it did not
have to (defect 18).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import TypeVar

from llamagate.application.admission import Admission
from llamagate.application.hub_models import HubModels, Resolved, describe, fetched_facts
from llamagate.application.latest_wins import LatestWins, Operation
from llamagate.application.load_job import LoadJob
from llamagate.application.rpc_workers import RpcWorkers
from llamagate.application.speech import Speaker, detect_codec, speak, speaker_for
from llamagate.application.telemetry import GenerationClock
from llamagate.application.watchdog import Watchdog
from llamagate.domain.audio_codecs import AudioCodec
from llamagate.domain.batching import decode_budget_s, learned_speed
from llamagate.domain.capabilities import disagreements, merge_server_caps
from llamagate.domain.chat import GenerateEvent, GenerateRequest
from llamagate.domain.embeddings import Embeddings, EmbedRequest, Ranking, RerankRequest, check_embed, check_rerank
from llamagate.domain.errors import (
    Aborted,
    Cancelled,
    EngineFailed,
    EngineRejected,
    Internal,
    InvalidArgument,
    LlamagateError,
    NoModelLoaded,
    NotReady,
    NotSpeechModel,
    WorkerUnavailable,
    WrongMode,
)
from llamagate.domain.generation import StreamFolder, chat_call
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.hub import HubSource
from llamagate.domain.hub_load import HubModel, fallback_note, memory_shortfall
from llamagate.domain.launch import LaunchSpec, check_load_options, launch_from_plan, prior_speed
from llamagate.domain.load_options import LoadOptions, ModelMode
from llamagate.domain.load_plan import LoadPlan, plan_load
from llamagate.domain.model_facts import ModelFacts
from llamagate.domain.model_info import LoadEvent, LoadPhase, ModelInfo
from llamagate.domain.model_state import ModelState, check_transition
from llamagate.domain.placement import footprint
from llamagate.domain.ports import (
    ChatEngine,
    DecoderLoader,
    EngineLauncher,
    EngineProcess,
    MemoryProbe,
    ModelInspector,
    NoTelemetry,
    Telemetry,
    TemplateRenderer,
)
from llamagate.domain.request_checks import rejected_field, validate
from llamagate.domain.restart_policy import RestartPolicy, failures_in_a_row, restart_delay
from llamagate.domain.rpc_workers import WorkerReport, load_blocker
from llamagate.domain.shards import model_id
from llamagate.domain.speech import (
    DEFAULT_DECODERS,
    DecoderSource,
    SpeechEvent,
    SpeechRequest,
    check_speech,
    require_speech,
    speech_call,
)

log = logging.getLogger(__name__)

StateListener = Callable[[ModelInfo], Awaitable[None] | None]

# How long a generation whose stream broke waits to learn whether the engine died.
_EXIT_NEWS_WAIT = 1.0
# A frozen engine gets this long to act on SIGTERM (it is resumed first) before SIGKILL.
_FROZEN_STOP_GRACE = 1.0
# The retry hint while a load or a restart is under way and nothing better is known.
_LOADING_RETRY_S = 1.0


@dataclass(frozen=True)
class SlotSettings:
    queue_size: int = 8  # generations that may wait for a busy slot; more are refused
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    watchdog: Watchdog = field(default_factory=Watchdog)
    cancel_within_s: float = 1.0  # the bound the batch size is chosen for; 0: the engine's default batch
    host_threads: int = 1  # CPU threads llama-server computes with when a load does not say (its default: all)
    host_cache_mib: int = 256  # llama-server's host-side prompt cache per model (--cache-ram; its default: 8 GiB)
    # each speech codec's decoder file (LLAMAGATE_SNAC_DECODER, LLAMAGATE_DAC_DECODER)
    decoders: Mapping[AudioCodec, DecoderSource] = field(default_factory=lambda: dict(DEFAULT_DECODERS))


ModelSource = str | HubSource  # a GGUF file on this machine, or a model on the Hub


@dataclass(frozen=True)
class Prepared:
    """A load request that passed every check that needs no change to the slot."""

    facts: ModelFacts
    options: LoadOptions
    projector_bytes: int
    hub: Resolved | None = None  # still to download: its facts were read from the Hub
    workers: tuple[WorkerReport, ...] = ()  # the RPC workers options.rpc_workers names, as probed

    @property
    def model_id(self) -> str:
        return model_id(PurePath(self.facts.path).name)


@dataclass(frozen=True)
class UnloadResult:
    was_loaded: bool  # something was loaded or loading
    pid: int  # the engine child that was stopped, 0 if none


@dataclass(eq=False)
class _Generation:
    """An in-flight generation; ``abort`` is set when the slot ends it on purpose."""

    abort: LlamagateError | None = None


class ModelSlot:
    def __init__(self, inspector: ModelInspector, launcher: EngineLauncher, memory: MemoryProbe,
                 settings: SlotSettings | None = None, renderer: TemplateRenderer | None = None,
                 hub: HubModels | None = None, telemetry: Telemetry | None = None, name: str = "",
                 decoders: DecoderLoader | None = None, workers: RpcWorkers | None = None) -> None:
        self._inspector = inspector
        self._workers = workers or RpcWorkers(None)  # None: no RPC worker may be named
        self._decoders = decoders  # None: speech models are detected, but cannot speak
        self._telemetry = telemetry or NoTelemetry()
        self._name = name  # the id requests name it by, for telemetry ("": the loaded model's own)
        self._hub = hub  # None: Hub sources are refused
        self._renderer = renderer  # reads capabilities off the chat template before launch
        self._launcher = launcher
        self._memory = memory
        self._settings = settings or SlotSettings()
        self._ops = LatestWins()
        self._state = ModelState.EMPTY
        self._info = ModelInfo()
        self._last_error = ""
        self._engine: EngineProcess | None = None  # set whenever a child may be alive
        self._restore_point: Prepared | None = None  # the model last READY, unless unloaded since
        self._exit_watch: asyncio.Task[None] | None = None  # the READY engine's supervisor
        self._admission: Admission | None = None  # the READY engine's slots and queue
        self._speaker: Speaker | None = None  # the READY engine's codec and decoder, for a speech model
        self._speaker_problem = ""  # why a model with a codec cannot speak
        self._launched: tuple[Prepared, ModelInfo, LaunchSpec] | None = None  # what a restart starts again
        self._ready_at = 0.0
        self._failures = 0  # engine failures in a row (restart policy)
        self._restarts = 0  # restarts since the last load by a caller
        self._restart_pending = False
        self._prompt_speeds: dict[tuple[str, tuple[int, ...]], float] = {}  # slowest prompt tokens/s seen
        self._prior_speed: float | None = None  # the running model's estimated prompt speed
        self._footprint: dict[str, int] = {}  # what the running (or starting) model was planned to hold
        self._last_used = 0.0  # loop time a generation last started or ended
        self._generations: set[_Generation] = set()
        self._listeners: list[StateListener] = []
        self._announcing: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ reading

    def status(self) -> ModelInfo:
        return replace(self._info, state=self._state, last_error=self._last_error, restarts=self._restarts)

    @property
    def footprint(self) -> dict[str, int]:
        """Memory by device the running or starting model was planned to hold; {} when none is."""
        return dict(self._footprint)

    @property
    def in_flight(self) -> int:
        """Generations streaming or queued now: a slot with any is never evicted."""
        return len(self._generations)

    @property
    def last_used(self) -> float:
        """Event-loop time a generation last started or ended (0: never)."""
        return self._last_used

    def on_change(self, listener: StateListener) -> None:
        """Call ``listener(status)`` (or await it) after every change of state or
        of the model's info, in order, outside the code that made the change."""
        self._listeners.append(listener)

    async def settled(self) -> None:
        """Return once no load or unload runs (restarts included) and listeners heard all."""
        await self._ops.idle()
        await self.announced()

    async def announced(self) -> None:
        """Return once every listener has heard of every change so far."""
        while (pending := self._announcing) is not None and not pending.done():
            await asyncio.wait({pending})

    # ------------------------------------------------------------------ transitions

    def _transition(self, target: ModelState, info: ModelInfo | None = None, *, error: str | None = None,
                    abort: LlamagateError | None = None) -> None:
        """The one place the state changes. ``abort`` ends in-flight generations
        when the slot leaves READY."""
        check_transition(self._state, target)
        before, self._state = self._state, target
        if info is not None:
            self._info = info
        if error is not None:
            self._last_error = error
        log.info("model slot: %s -> %s%s", before.value, target.value, f" ({error})" if error else "")
        if before is ModelState.READY and target is not ModelState.READY:
            self._end_generations(abort or Aborted(f"model {self._info.id} stopped serving"))
        self._announce()

    def _update_info(self, info: ModelInfo) -> None:
        self._info = info
        self._announce()

    def _announce(self) -> None:
        """Deliveries are chained tasks: in order, and never cut short by the
        cancellation of whoever made the change."""
        self._announcing = asyncio.create_task(self._deliver(self._announcing, self.status()))

    async def _deliver(self, previous: asyncio.Task[None] | None, snapshot: ModelInfo) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        for listener in list(self._listeners):
            try:
                result = listener(snapshot)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a listener's bug must not break the slot
                log.exception("model slot listener failed")

    def _end_generations(self, abort: LlamagateError) -> None:
        if self._admission is not None:  # those still queued too
            self._admission.close(abort)
            self._admission = None
        for generation in self._generations:  # one exception object each: they are raised in different tasks
            generation.abort = generation.abort or copy.copy(abort)  # keeps its details (a worker's address)

    # ------------------------------------------------------------------ planning

    async def plan(self, source: ModelSource, options: LoadOptions,
                   gpus: list[GpuInfo] | None = None) -> tuple[LoadPlan, HubModel | None]:
        """What a load would do now, and for a Hub model what it would fetch;
        ``gpus`` plans for those instead of ours. Downloads nothing."""
        prepared = await self.prepare(source, options, for_load=False)
        return await self._plan(prepared, gpus), prepared.hub.model if prepared.hub else None

    async def plan_prepared(self, prepared: Prepared, gpus: list[GpuInfo] | None = None) -> LoadPlan:
        """The plan for a prepared load with the memory free now (or for ``gpus``)."""
        return await self._plan(prepared, gpus)

    async def prepare(self, source: ModelSource, options: LoadOptions, *, for_load: bool) -> Prepared:
        """Every check of a load that needs no change to the slot: the file or
        the Hub's files, the header, the options (no state of this slot is read)."""
        check_load_options(options)
        self._workers.check_allowed(options.rpc_workers)  # before anything is read or probed
        if isinstance(source, str):
            return await self._with_workers(await self._inspect(source, options), for_load)
        if self._hub is None:
            raise InvalidArgument("this service does not load models from the Hub", field="hub")
        if options.mmproj_path:
            raise InvalidArgument("a Hub model brings its own projector when its repo has one; "
                                  "mmproj_path is for files on this machine", field="options.mmproj_path")
        resolved = await self._hub.resolve(source, for_load=for_load)
        return await self._with_workers(Prepared(resolved.facts, options, resolved.projector_bytes, resolved), for_load)

    async def _with_workers(self, prepared: Prepared, for_load: bool) -> Prepared:
        """The RPC workers probed (their devices and memory), a load refused when one cannot serve it now."""
        if not prepared.options.rpc_workers:
            return prepared
        reports = await self._workers.survey(prepared.options.rpc_workers)
        if for_load:
            for report in reports:
                if (problem := load_blocker(report)) is not None:
                    raise problem
        return replace(prepared, workers=reports)

    def check_workers(self, prepared: Prepared) -> None:
        """Refuse a load whose RPC workers another of our models holds (a worker serves one llama-server)."""
        if (problem := self._workers.blocker(prepared.workers, self)) is not None:
            raise problem

    async def _inspect(self, path: str, options: LoadOptions) -> Prepared:
        facts = await asyncio.to_thread(self._inspector.inspect, path)
        projector = 0
        if options.mmproj_path:
            projector = (await asyncio.to_thread(self._inspector.inspect, options.mmproj_path)).size_bytes
        return Prepared(facts, options, projector)

    async def _plan(self, prepared: Prepared, gpus: list[GpuInfo] | None) -> LoadPlan:
        """Plan in a worker thread (it probes GPUs and may loop over layers);
        when the caller goes away the planner is told to stop."""
        stop = threading.Event()

        def work() -> LoadPlan:
            found = gpus if gpus is not None else self._memory.gpus()
            host = 0 if found else self._memory.host_free_bytes()
            return plan_load(prepared.facts, prepared.options, found, host, projector_bytes=prepared.projector_bytes,
                             simulated=gpus is not None, should_stop=stop.is_set, workers=prepared.workers)

        try:
            return await asyncio.to_thread(work)
        finally:
            stop.set()

    # ------------------------------------------------------------------ load

    async def load(self, source: ModelSource | Prepared, options: LoadOptions) -> AsyncGenerator[LoadEvent, None]:
        """Load a model, replacing whatever is loaded or loading; yields its phases.

        A Hub model is resolved, its header read and its plan made before
        anything is downloaded; the download runs while the model it
        replaces keeps serving. ``source`` may be `prepare`'s result already
        (``options`` are then its own)."""
        ticket = self._ops.ticket()
        if isinstance(source, Prepared):
            prepared = source
        else:
            if isinstance(source, str):
                yield LoadEvent(LoadPhase.RESOLVING, f"reading the GGUF header of {source}")
            else:
                yield LoadEvent(LoadPhase.RESOLVING, f"resolving {source.reference} on the Hub")
            prepared = await self.prepare(source, options, for_load=True)
        if prepared.hub is not None:
            hub = prepared.hub.model
            if note := fallback_note(hub):
                log.info("%s", note)
            yield LoadEvent(LoadPhase.RESOLVING, "; ".join(filter(None, [describe(hub), note])), hub=hub)
        self.check_workers(prepared)
        load_plan = await self._plan(prepared, None)  # bad options or hyperparameters fail here, nothing stopped yet
        if prepared.hub is not None:
            await self._check_memory(prepared, load_plan)
        await asyncio.to_thread(self._launcher.check)  # so does a missing or broken engine binary
        job = LoadJob()
        op = Operation(f"load of {prepared.model_id}", lambda op: self._load_op(op, job, prepared),
                       dropped=job.superseded)
        self._ops.submit(ticket, op)
        try:
            async for event in job.events():
                yield event
        finally:
            if not job.ended:  # our caller went away: the load stops, what it replaced comes back
                op.abandon()

    async def _check_memory(self, prepared: Prepared, load_plan: LoadPlan) -> None:
        """A Hub model that could not fit even across all memory is refused
        before its download (a local file still goes to llama-server's --fit)."""
        gpus = await asyncio.to_thread(self._memory.gpus)
        host = await asyncio.to_thread(self._memory.host_free_bytes)
        host += sum(share.free_bytes for share in load_plan.plan.workers)  # RPC workers' memory counts too
        held = sum(self.footprint.values())  # freed when it is replaced
        if (shortfall := memory_shortfall(prepared.model_id, load_plan.plan, gpus, host, held)) is not None:
            raise shortfall

    async def _load_op(self, op: Operation, job: LoadJob, prepared: Prepared) -> None:
        previous = self._restore_point
        self._restarts = self._failures = 0  # a caller's load starts the count again
        if prepared.hub is not None and self._state is ModelState.READY:
            fetched = await self._fetch_beside(op, job, prepared)  # the model it replaces serves meanwhile
            if fetched is None:
                return
            prepared = fetched
        try:
            if prepared.hub is not None:
                self._transition(ModelState.LOADING, ModelInfo(id=prepared.model_id, path=prepared.facts.path),
                                 error="")
                prepared = await self._fetch(prepared, job)
            await self._stop_engine(Aborted(f"model {self._info.id} was replaced by a later load of "
                                            f"{prepared.model_id}"))
            await self._bring_up(prepared, job.emit)
            job.end()
        except asyncio.CancelledError:
            _uncancel()
            await self._stop_engine(Aborted("its load was cancelled"))
            if op.superseded:  # the later request decides what comes next
                return
            job.end(Cancelled(f"the load of {prepared.model_id} was cancelled by its caller"))
            await self._recover(previous, "the load was cancelled", cancelled=True)
        except Exception as failure:  # noqa: BLE001 - a bug too must leave the slot consistent
            error = failure if isinstance(failure, LlamagateError) else _internal(failure, prepared)
            await self._stop_engine(Aborted(f"the load of {prepared.model_id} failed"))
            restore = previous if previous is not None and previous != prepared else None
            if restore is not None:
                error.args = (f"{error}; the previous model {restore.model_id} is being started again",)
            job.end(error)
            await self._recover(restore, str(error), cancelled=False)
        finally:
            job.superseded()  # a no-op once ended: only a load that ended no other way was superseded

    async def _fetch(self, prepared: Prepared, job: LoadJob) -> Prepared:
        """DOWNLOADING: the files into the Hub cache; then the same facts, about the local file."""
        assert self._hub is not None and prepared.hub is not None
        fetched = await self._hub.download(prepared.hub, job.emit)
        options = replace(prepared.options, mmproj_path=fetched.projector_path)
        return Prepared(fetched_facts(prepared.hub, fetched), options, prepared.projector_bytes,
                        workers=prepared.workers)

    async def _fetch_beside(self, op: Operation, job: LoadJob, prepared: Prepared) -> Prepared | None:
        """`_fetch` while the loaded model keeps serving: its end, for any reason
        but success, leaves that model as it is (None)."""
        try:
            return await self._fetch(prepared, job)
        except asyncio.CancelledError:
            _uncancel()
            if op.superseded:  # the later request decides what becomes of the loaded model
                job.superseded()
            else:
                job.end(Cancelled(f"the download of {prepared.model_id} was cancelled by its caller; "
                                  f"what was fetched stays in the cache, and the next load resumes it"))
        except LlamagateError as error:
            job.end(error)
        except Exception as failure:  # noqa: BLE001 - a bug must not take the serving model with it
            job.end(_internal(failure, prepared))
        return None

    async def _bring_up(self, prepared: Prepared, emit: Callable[[LoadEvent], None],
                        launch: tuple[ModelInfo, LaunchSpec] | None = None) -> ModelInfo:
        """LOADING → READY: plan with the memory free now (or start ``launch``
        again, a restart), spawn, wait for health."""
        started = asyncio.get_running_loop().time()
        if launch is None:
            self._transition(ModelState.LOADING, ModelInfo(id=prepared.model_id, path=prepared.facts.path))
            load_plan = await self._plan(prepared, None)
            # In a thread: probing the chat template renders it several times (up to ~0.1 s).
            info, spec = await asyncio.to_thread(
                launch_from_plan, load_plan, prepared.options,
                prompt_speed=self._prompt_speeds.get((prepared.facts.path, load_plan.plan.gpus)),
                decode_budget_s=decode_budget_s(self._settings.cancel_within_s),
                host_threads=self._settings.host_threads, renderer=self._renderer,
                host_cache_mib=self._settings.host_cache_mib)
            self._prior_speed = prior_speed(load_plan, prepared.options, self._settings.host_threads)
            self._footprint = footprint(load_plan.plan, self._settings.host_cache_mib << 20)
            self._update_info(info)
            emit(LoadEvent(LoadPhase.PLANNING, _plan_message(info, load_plan), plan=load_plan))
        else:
            info, spec = launch
            self._transition(ModelState.LOADING, info)
            await self._check_workers_again(spec)
        if spec.rpc_workers:  # from now our llama-server holds them: no probe until it is gone
            self._workers.hold(spec.rpc_workers, self, info.id)
        engine = self._engine = await self._launcher.launch(spec)
        self._update_info(replace(info, pid=engine.pid))
        emit(LoadEvent(LoadPhase.STARTING, f"llama-server started (pid {engine.pid})", model=self.status()))
        await self._await_health(engine, prepared.facts.size_bytes, emit)
        server_caps = await engine.chat.server_capabilities()
        if differ := disagreements(self._info.capabilities, server_caps):  # e.g. a template read unlike llama.cpp
            log.warning("chat template of %s: %s; /props decides", self._info.id, "; ".join(differ))
        ready = replace(self._info, capabilities=merge_server_caps(self._info.capabilities, server_caps))
        if ready.mode is ModelMode.CHAT:
            ready = replace(ready, audio_codec=await self._learn_speech(engine.chat, prepared.facts, ready.id))
        self._admission = Admission(spec.parallel, self._settings.queue_size,
                                    on_change=functools.partial(self._telemetry.queue, self._label))
        self._transition(ModelState.READY, ready, error=None if launch else "")
        self._telemetry.load_finished(self._label, asyncio.get_running_loop().time() - started)
        self._restore_point, self._launched = prepared, (prepared, info, spec)
        self._ready_at = asyncio.get_running_loop().time()
        self._supervise(engine)
        await self.announced()  # health says SERVING before the caller hears READY
        total = prepared.facts.size_bytes
        emit(LoadEvent(LoadPhase.READY, f"{info.id} is ready", total, total, self.status()))
        return ready

    async def _check_workers_again(self, spec: LaunchSpec) -> None:
        """A restart on RPC workers: each must answer first, or the failure names the one that does not."""
        if spec.rpc_workers:
            self._workers.release(self)
            reports = await self._workers.survey(spec.rpc_workers)
            if (problem := self._workers.blocker(reports, self)) is not None:
                raise problem

    async def _learn_speech(self, chat: ChatEngine, facts: ModelFacts, model: str) -> AudioCodec:
        """The codec the model's tokens encode; a Speaker when it is one llamagate decodes."""
        codec = await detect_codec(chat, facts.hyperparameters.vocab_size)
        try:
            self._speaker = await speaker_for(chat, codec, model, self._decoders, self._settings.decoders)
        except NotSpeechModel as error:  # a marker matched, but the code tokens are not all there
            log.warning("%s", error)
            self._speaker_problem = str(error)
        return codec

    def _close_speaker(self) -> None:
        speaker, self._speaker, self._speaker_problem = self._speaker, None, ""
        if speaker is not None:
            speaker.close()

    async def _await_health(self, engine: EngineProcess, total: int, emit: Callable[[LoadEvent], None]) -> None:
        """LOADING events, one per whole percent of the weights resident (SPEC §10)."""
        last_percent = -1
        async for resident in engine.wait_ready():
            loaded = min(resident, total)
            percent = loaded * 100 // total if total else 100
            if percent != last_percent:
                last_percent = percent
                message = f"loading weights: {percent}% ({loaded >> 20} of {total >> 20} MiB resident)"
                emit(LoadEvent(LoadPhase.LOADING, message, loaded, total))

    async def _recover(self, previous: Prepared | None, why: str, *, cancelled: bool) -> None:
        """After a load that did not finish: start ``previous`` again, or settle
        (EMPTY after a cancel, else FAILED saying why)."""
        if previous is not None:
            try:
                await self._bring_up(previous, _log_event)
                return
            except asyncio.CancelledError:
                _uncancel()
                await self._stop_engine(Aborted(f"the restart of {previous.model_id} was superseded"))
                return
            except LlamagateError as error:
                await self._stop_engine(Aborted(f"the restart of {previous.model_id} failed"))
                why, cancelled = f"{why}; starting {previous.model_id} again failed too: {error}", False
        if self._state in (ModelState.LOADING, ModelState.STOPPING):
            if cancelled:
                self._transition(ModelState.EMPTY, ModelInfo(), error="")
            else:
                self._transition(ModelState.FAILED, replace(self._info, pid=0), error=why)

    # ------------------------------------------------------------------ stopping

    async def unload(self) -> UnloadResult:
        """Stop the model or the load in progress; completes even if the caller leaves."""
        ticket = self._ops.ticket()
        result = UnloadResult(self._state is not ModelState.EMPTY, self._engine.pid if self._engine else 0)
        op = self._ops.submit(ticket, Operation("unload", self._unload_op))
        await asyncio.shield(op.finished.wait())
        await self.announced()
        return result

    async def _unload_op(self, op: Operation) -> None:
        try:
            await self._stop_engine(Aborted(f"model {self._info.id} was unloaded"))
        except asyncio.CancelledError:
            _uncancel()  # a later load took over; it stops what is left
            return
        self._restore_point = None
        if self._state is not ModelState.EMPTY:
            self._transition(ModelState.EMPTY, ModelInfo(), error="")

    async def _stop_engine(self, abort: LlamagateError) -> None:
        """Stop the child, if any: READY/LOADING → STOPPING, and ``_engine`` cleared once it is gone."""
        engine = self._engine
        if engine is None:
            self._workers.release(self)  # a launch that failed before there was a child
            return
        if self._state in (ModelState.READY, ModelState.LOADING):
            self._transition(ModelState.STOPPING, abort=abort)
        if self._exit_watch is not None:
            self._exit_watch.cancel()
        await engine.stop()
        self._engine = None
        self._workers.release(self)
        self._footprint = {}
        self._close_speaker()

    # ------------------------------------------------------------------ failures and restarts

    def _supervise(self, engine: EngineProcess) -> None:
        """A READY child that dies (OOM killer, crash) or stops answering
        (SIGSTOP, a deadlock) fails the slot; the restart policy decides what next."""
        async def supervise() -> None:
            exited = asyncio.ensure_future(engine.wait_exit())
            frozen = asyncio.ensure_future(self._settings.watchdog.watch(engine.responsive))
            try:
                await asyncio.wait({exited, frozen}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                exited.cancel()
                frozen.cancel()
            if self._engine is not engine or self._state is not ModelState.READY:
                return
            if exited.done() and not exited.cancelled():
                how = exited.result()
                why = f"llama-server exited unexpectedly ({how.how})"
                abort: LlamagateError = EngineFailed(
                    f"llama-server exited unexpectedly during the generation ({how.describe()})")
                lost = await self._lost_worker(engine)
                if self._engine is not engine or self._state is not ModelState.READY:
                    return
                if lost is not None:  # llama-server aborts when a worker goes: say which one
                    why = f"{lost.describe()}; llama-server exited ({how.how})"
                    abort = WorkerUnavailable(f"{lost.describe()}: llama-server lost it during the generation "
                                              f"({how.how})", address=lost.address)
            else:
                why = f"llama-server stopped answering (no reply for {frozen.result():.1f} s)"
                abort = EngineFailed("llama-server stopped answering during the generation; it is being restarted")
            await self._engine_failed(engine, why, abort)
        self._exit_watch = asyncio.create_task(supervise(), name=f"supervisor of {engine.pid}")

    async def _lost_worker(self, engine: EngineProcess) -> WorkerReport | None:
        """The dead engine's first RPC worker that no longer answers, if it ran on any."""
        spec = self._launched[2] if self._launched is not None else None
        if spec is None or not spec.rpc_workers:
            return None
        self._workers.release(self)  # the engine is gone: its workers may be asked again
        return await self._workers.lost(spec.rpc_workers)

    async def _engine_failed(self, engine: EngineProcess, why: str, abort: LlamagateError) -> None:
        """READY → FAILED: end what runs, stop the child, restart it if the policy allows."""
        served = asyncio.get_running_loop().time() - self._ready_at
        self._failures = failures_in_a_row(self._settings.restart, self._failures, served)
        delay = restart_delay(self._settings.restart, self._failures)
        self._restart_pending = delay is not None  # from now: a Generate hears "restarting", retryable
        self._transition(ModelState.FAILED, replace(self._info, pid=0), error=self._failure_text(why, delay),
                         abort=abort)
        try:
            # A frozen child still lives, and holds its memory: it goes before the restart.
            await engine.stop(grace=_FROZEN_STOP_GRACE)
        finally:  # cancelled: a LoadModel or UnloadModel took over, and stops it itself
            self._restart_pending = False
            if self._engine is engine:
                self._engine = None
                self._workers.release(self)
                self._close_speaker()
        if delay is not None:
            self._schedule_restart(delay)

    def _failure_text(self, why: str, delay: float | None) -> str:
        policy = self._settings.restart
        if delay is not None:
            return f"{why}; restarting in {delay:g} s (restart {self._failures} of at most {policy.max_restarts})"
        if not policy.enabled:
            return f"{why}; restarts are off (LLAMAGATE_RESTART): load the model again"
        return (f"{why}; gave up after {policy.max_restarts} restart(s) in a row (LLAMAGATE_RESTART_MAX): "
                f"load the model again")

    def _schedule_restart(self, delay: float) -> None:
        """A restart runs as an operation, in the background: it never takes
        precedence over a LoadModel or UnloadModel, and any later one cancels it."""
        launched = self._launched
        if launched is None:
            return
        op = Operation(f"restart of {launched[0].model_id}", lambda op: self._restart_op(launched, delay),
                       dropped=self._restart_ended)
        self._restart_pending = self._ops.submit_background(op)

    def _restart_ended(self) -> None:
        self._restart_pending = False

    async def _restart_op(self, launched: tuple[Prepared, ModelInfo, LaunchSpec], delay: float | None) -> None:
        """FAILED → LOADING → READY with the same launch, retried while the policy allows."""
        prepared, info, spec = launched
        try:
            while delay is not None:
                await asyncio.sleep(delay)
                self._restarts += 1
                try:
                    await self._bring_up(prepared, _log_event, launch=(info, spec))
                    return
                except LlamagateError as error:
                    await self._stop_engine(Aborted(f"the restart of {prepared.model_id} failed"))
                    self._failures += 1
                    delay = restart_delay(self._settings.restart, self._failures)
                    why = f"starting {prepared.model_id} again failed: {error}"
                    self._transition(ModelState.FAILED, replace(self._info, pid=0),
                                     error=self._failure_text(why, delay))
        except asyncio.CancelledError:
            _uncancel()  # a LoadModel or UnloadModel took over; it decides what comes next
            await self._stop_engine(Aborted(f"the restart of {prepared.model_id} was superseded"))
        finally:
            self._restart_ended()

    async def close(self) -> None:
        """Stop everything (service shutdown)."""
        await self.unload()
        if self._exit_watch is not None:  # it may still be killing a frozen child
            await asyncio.wait({self._exit_watch})

    # ------------------------------------------------------------------ generate

    def serving(self) -> ModelInfo:
        """The model that serves generations now; raises NotReady (loading,
        restarting: retry) or NoModelLoaded when none does."""
        if self._state is not ModelState.READY or self._engine is None or self._admission is None:
            raise self._not_ready()
        return self.status()

    async def generate(self, request: GenerateRequest, *, checked: bool = False) -> AsyncGenerator[GenerateEvent, None]:
        """``checked``: the caller validated the request already (the agent loop's turns)."""
        info = self.serving()
        _check_mode(info, ModelMode.CHAT)
        engine, admission = self._engine, self._admission
        assert engine is not None and admission is not None  # serving() said so
        if not checked:
            validate(request, info.capabilities, slot_context(info))
        call = chat_call(request, info.capabilities, slot_context(info))
        generation = _Generation()
        self._generations.add(generation)
        self._last_used = asyncio.get_running_loop().time()
        folder = StreamFolder(max_tokens=call.max_tokens)
        clock = GenerationClock(self._telemetry, self._label, asyncio.get_running_loop().time)
        try:
            async with admission.slot():  # Overloaded when the queue is full; waits here otherwise
                if generation.abort is not None:  # the model stopped while we waited
                    raise generation.abort
                try:
                    async for chunk in engine.chat.stream_chat(call):
                        if generation.abort is not None:
                            raise generation.abort
                        events = folder.feed(chunk)
                        clock.saw(events)
                        for event in events:
                            yield event
                    alone = admission.running == 1  # others' tokens share the decodes: their speed is not ours
                    clock.finished(folder.usage, folder.timings)
                except EngineFailed as error:
                    raise await self._why_stream_broke(generation, error) from error
                except EngineRejected as error:  # name the field, where the engine's words tell which
                    raise rejected_field(error, request) from error
                if alone:
                    self._learn_prompt_speed(info, folder)
                for event in folder.finish():
                    yield event
        finally:
            self._generations.discard(generation)
            self._last_used = asyncio.get_running_loop().time()

    @property
    def _label(self) -> str:
        return self._name or self._info.id

    async def engine_metrics(self) -> str | None:
        """The serving engine's own metrics (``ChatEngine.engine_metrics``); None when none serves."""
        engine = self._engine if self._state is ModelState.READY else None
        return None if engine is None else await engine.chat.engine_metrics()

    def _learn_prompt_speed(self, info: ModelInfo, folder: StreamFolder) -> None:
        """The next start of this model (a restart, a reload) sizes its batch from it."""
        launched, speed = self._launched, folder.slowest_prompt_speed
        if speed is None or launched is None or launched[0].facts.path != info.path:
            return
        spec = launched[2]
        key = (info.path, spec.gpus)
        learned = learned_speed(self._prompt_speeds.get(key), speed, position=folder.slowest_prompt_position,
                                slot_context=slot_context(info),
                                prior=self._prior_speed)
        if learned is not None:
            self._prompt_speeds[key] = learned

    async def count_tokens(self, request: GenerateRequest) -> tuple[int, int]:
        """The prompt tokens ``request`` takes after the chat template, and
        what one slot holds. Not queued: llama-server templates and
        tokenizes it on its HTTP thread, beside any running decode."""
        info, engine = self.serving(), self._engine
        assert engine is not None  # serving() said so
        _check_mode(info, ModelMode.CHAT)  # a conversation's tokens mean nothing to an embedding model
        validate(request, info.capabilities)
        tokens = await engine.chat.count_tokens(chat_call(request, info.capabilities, slot_context(info)))
        return tokens, slot_context(info)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """One vector per text, from a model loaded in EMBEDDING mode; queued
        for a slot as a generation is (Overloaded when the queue is full)."""
        _check_mode(self.serving(), ModelMode.EMBEDDING)
        check_embed(request)
        return await self._queued(lambda chat: chat.embed(request))

    async def rerank(self, request: RerankRequest) -> Ranking:
        """The documents ranked against the query by a model loaded in RERANK
        mode, best first, ``top_n`` of them; queued for a slot as a generation is."""
        _check_mode(self.serving(), ModelMode.RERANK)
        check_rerank(request)
        return await self._queued(lambda chat: chat.rerank(request))

    async def _queued(self, work: Callable[[ChatEngine], Awaitable[_T]]) -> _T:
        """``work`` on the engine in one of the admission's slots, ended with
        the slot's reason (Aborted, ...) when the model stops meanwhile."""
        async with self._admitted() as (chat, _):
            return await work(chat)

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[tuple[ChatEngine, _Generation]]:
        """The serving engine, in one of the admission's slots (Overloaded when
        the queue is full); a broken stream inside is explained by
        ``_why_stream_broke``. ``generation.abort`` is set when the slot ends it."""
        engine, admission = self._engine, self._admission
        assert engine is not None and admission is not None  # serving() said so
        generation = _Generation()
        self._generations.add(generation)
        self._last_used = asyncio.get_running_loop().time()
        try:
            async with admission.slot():
                if generation.abort is not None:  # the model stopped while we waited
                    raise generation.abort
                try:
                    yield engine.chat, generation
                except EngineFailed as error:
                    raise await self._why_stream_broke(generation, error) from error
        finally:
            self._generations.discard(generation)
            self._last_used = asyncio.get_running_loop().time()

    async def synthesize(self, request: SpeechRequest) -> AsyncGenerator[SpeechEvent, None]:
        """Speech of a model whose tokens encode an audio codec llamagate
        decodes: audio chunks as its frames come, then SpeechDone. Queued for
        a slot as a generation is; NotSpeechModel for any other model,
        DecoderUnavailable when its decoder cannot be loaded."""
        info = self.serving()
        _check_mode(info, ModelMode.CHAT)
        require_speech(info.audio_codec, info.id)
        speaker = self._speaker
        if speaker is None:
            raise NotSpeechModel(self._speaker_problem or f"model {info.id} cannot speak")
        check_speech(request, info.audio_codec, slot_context(info))
        decoder = await speaker.decoder()  # before queueing: a missing file is said at once
        call = speech_call(request, info.audio_codec, slot_context(info))
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with self._admitted() as (chat, generation):
            async with contextlib.aclosing(speak(chat.stream_tokens(call), speaker, decoder,
                                                 lambda: loop.time() - started)) as events:
                async for event in events:
                    if generation.abort is not None:
                        raise generation.abort
                    yield event

    async def _why_stream_broke(self, generation: _Generation, error: EngineFailed) -> LlamagateError:
        """A broken stream is often the first news of a stop or a crash: say which."""
        if generation.abort is None and self._exit_watch is not None:
            await asyncio.wait({self._exit_watch}, timeout=_EXIT_NEWS_WAIT)
        return generation.abort or error

    def _not_ready(self) -> LlamagateError:
        """Why a generation cannot start now; retryable (UNAVAILABLE) while a load or restart runs."""
        info = self.status()
        if self._state is ModelState.LOADING and self._restart_pending and info.last_error:  # say why it restarts
            return NotReady(f"model {info.id} is being restarted: {info.last_error}", retry_after_s=_LOADING_RETRY_S)
        if self._state is ModelState.LOADING:
            return NotReady(f"model {info.id} is loading; retry shortly", retry_after_s=_LOADING_RETRY_S)
        if self._state is ModelState.FAILED and self._restart_pending:
            return NotReady(f"model {info.id} is being restarted: {info.last_error}", retry_after_s=_LOADING_RETRY_S)
        if self._state is ModelState.STOPPING:
            return NoModelLoaded(f"model {info.id} is being stopped")
        if self._state is ModelState.FAILED:
            return NoModelLoaded(info.last_error or f"model {info.id} failed")
        return NoModelLoaded("no model is loaded; call LoadModel first")


def slot_context(info: ModelInfo) -> int:
    """The tokens one slot holds: llama-server splits the context evenly."""
    return info.context_length // max(info.parallel, 1)


_T = TypeVar("_T")
_SERVES = {ModelMode.CHAT: "chat completions", ModelMode.EMBEDDING: "embeddings", ModelMode.RERANK: "rerank scores"}


def _check_mode(info: ModelInfo, needed: ModelMode) -> None:
    """Raise WrongMode unless the serving model was loaded for ``needed``."""
    if info.mode is not needed:
        raise WrongMode(f"model {info.id} was loaded in {info.mode.value} mode and serves {_SERVES[info.mode]} "
                        f"only; {_SERVES[needed]} need a model loaded in {needed.value} mode (LoadOptions.mode)")


def _uncancel() -> None:
    """We handled the cancellation ourselves: later awaits must not see it again."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _internal(failure: Exception, prepared: Prepared) -> Internal:
    log.error("the load of %s failed unexpectedly", prepared.model_id, exc_info=failure)
    return Internal(f"the load of {prepared.model_id} failed unexpectedly: {failure!r}")


def _log_event(event: LoadEvent) -> None:
    log.info("restart %s: %s", event.phase.value, event.message)


def _plan_message(info: ModelInfo, load_plan: LoadPlan) -> str:
    plan = load_plan.plan
    where = f"GPU {','.join(map(str, plan.gpus))}" if plan.gpus else ("--fit on" if not plan.fits else "CPU")
    if plan.workers:
        where = f"RPC workers {', '.join(dict.fromkeys(w.address for w in plan.workers))}" + (
            f" and {where}" if plan.gpus or not plan.fits else "")
    return (
        f"{info.architecture} model: context {info.context_length} (native {info.native_context_length}),"
        f" {info.parallel} slot(s), KV cache {info.cache_type.value}, on {where}; " + "; ".join(plan.reasons)
    )
