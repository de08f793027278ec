"""How the domain and the application talk to the world.

Adapters satisfy these by shape (no inheritance); ``tests/fakes.py`` holds a
fake of each. Only domain types cross them: no URL, port, flag or raw dict.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from llamagate.domain.audio_codecs import CodecCodes, CodecShape
from llamagate.domain.capabilities import ServerCapabilities
from llamagate.domain.chat import ChatCall, ChatChunk, MarkupEvent, Tool
from llamagate.domain.embeddings import Embeddings, EmbedRequest, Ranking, RerankRequest
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.hub import HubFile, HubListing, HubSource
from llamagate.domain.launch import LaunchSpec
from llamagate.domain.model_facts import ModelFacts, MoreBytes
from llamagate.domain.model_state import ModelState
from llamagate.domain.rpc_workers import WorkerReport
from llamagate.domain.speech import DecoderSource, TokenCall, TokenChunk
from llamagate.domain.tools import ToolResult

# What a chat template reads: messages, tools and its keyword arguments are
# JSON-shaped values in the template's own language (role, content, ...).
TemplateValue: TypeAlias = "str | int | float | bool | None | Sequence[TemplateValue] | Mapping[str, TemplateValue]"


class TemplateRenderer(Protocol):
    def render(self, template: str, messages: Sequence[Mapping[str, TemplateValue]],
               tools: Sequence[Mapping[str, TemplateValue]], *, add_generation_prompt: bool,
               extra: Mapping[str, TemplateValue]) -> str:
        """The prompt ``template`` makes of a conversation (blocking, bounded in
        time and size); ``extra`` are further variables (``enable_thinking``, ...).
        Raises TemplateError when the template does not render."""
        ...


class ModelInspector(Protocol):
    def inspect(self, path: str) -> ModelFacts:
        """Read the GGUF header (blocking). Raises ModelNotFound or InvalidModel."""
        ...

    def inspect_prefix(self, prefix: bytes, path: str, size_bytes: int) -> ModelFacts | MoreBytes:
        """The facts of a model from the first bytes of its first shard (a
        file not on this disk: ``path`` names it, ``size_bytes`` is all its
        shards' size), or how many more bytes the header needs at least.
        Raises InvalidModel."""
        ...


class ModelHub(Protocol):
    """A model hub (the Hugging Face Hub) and its local cache, shared with other tools."""

    @property
    def cache_dir(self) -> str:
        """Where downloads go."""
        ...

    @property
    def offline(self) -> bool:
        """Whether only the local cache may be used (HF_HUB_OFFLINE)."""
        ...

    def listing(self, source: HubSource) -> HubListing:
        """The repo's files at the source's revision (blocking): from the Hub
        online, with sizes and checksums; offline, what the cache holds of it.
        Raises ModelNotFound (repo, revision), PermissionDenied (gated, token
        refused), NotCached (offline), SourceUnavailable."""
        ...

    def cached_bytes(self, listing: HubListing) -> Mapping[str, int]:
        """By path, the bytes of each file the cache already holds: whole
        files, and the resumable part of an interrupted download (blocking)."""
        ...

    def local_path(self, listing: HubListing, path: str) -> str | None:
        """The cached file for ``path`` at the listing's commit, if it is whole there (blocking)."""
        ...

    def read_range(self, source: HubSource, listing: HubListing, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file (fewer past its end) by one range request (blocking)."""
        ...

    async def download(self, source: HubSource, listing: HubListing, file: HubFile,
                       progress: Callable[[int], None]) -> str:
        """Fetch ``file`` into the cache, resuming what an earlier call left,
        and return its local path. ``progress(n)`` hears each ``n`` new bytes.
        Cancelled, it stops at once and keeps what it fetched for the next
        call. Raises SourceUnavailable (also for a checksum mismatch: the
        partial file is removed), PermissionDenied, ModelNotFound."""
        ...


class DiskSpace(Protocol):
    def free_bytes(self, directory: str) -> int:
        """Bytes still free on the file system that holds ``directory``, or
        would hold it once created (blocking)."""
        ...


class MemoryProbe(Protocol):
    def gpus(self) -> list[GpuInfo]:
        """The GPUs this service may use, with their free memory now (blocking)."""
        ...

    def host_free_bytes(self) -> int:
        """System memory available now (the pool when there is no GPU)."""
        ...


class WorkerProbe(Protocol):
    def probe(self, address: str, timeout_s: float) -> WorkerReport:
        """What the RPC worker at ``address`` (host:port) says of its devices and
        memory (blocking, within about ``timeout_s``). Never raises: an
        unreachable, busy or foreign worker is a report in that state."""
        ...


@dataclass(frozen=True)
class EngineExit:
    """How a child ended: ``how`` in words ("exit code 1", "killed by SIGKILL")."""

    how: str
    last_output: str = ""

    def describe(self) -> str:
        return f"{self.how}; its last output:\n{self.last_output}" if self.last_output else self.how


class Tokenizer(Protocol):
    """A loaded model's own tokenizer."""

    async def tokenize(self, text: str) -> list[int]:
        """The ids of ``text``, special-token markup read as those tokens, no
        BOS added. Raises EngineFailed or EngineRejected."""
        ...

    async def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``, special tokens written out. Raises
        EngineFailed, or EngineRejected for an id the vocabulary lacks."""
        ...


class ChatEngine(Tokenizer, Protocol):
    """One running engine's API."""

    def stream_chat(self, call: ChatCall) -> AsyncIterator[ChatChunk]:
        """Stream a completion. Raises EngineFailed (EngineTimedOut), EngineRejected or ContextExceeded."""
        ...

    def stream_tokens(self, call: TokenCall) -> AsyncGenerator[TokenChunk, None]:
        """Stream a raw completion's token ids (no chat template); closing the
        generator stops the engine's work. Raises
        EngineFailed (EngineTimedOut), EngineRejected or ContextExceeded."""
        ...

    async def count_tokens(self, call: ChatCall) -> int:
        """The prompt tokens ``call`` takes after the chat template. Raises
        EngineFailed or EngineRejected."""
        ...

    async def server_capabilities(self) -> ServerCapabilities:
        """What the engine reports about the loaded template and modalities (all None if it cannot say)."""
        ...

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """One vector per text, in order, of an engine started in EMBEDDING
        mode. Raises EngineFailed (EngineTimedOut), EngineRejected (the
        engine refused it, e.g. a model without pooling), or ContextExceeded
        when a text is longer than the engine takes at once (a slot's context,
        or its batch)."""
        ...

    async def rerank(self, request: RerankRequest) -> Ranking:
        """Each document scored against the query by an engine started in
        RERANK mode: ranked best first (``embeddings.rank``), cut to
        ``top_n``. Raises EngineFailed (EngineTimedOut), EngineRejected, or
        ContextExceeded when a query with a document is longer than a slot's
        context (or the engine's batch)."""
        ...

    async def engine_metrics(self) -> str:
        """The engine's own counters and gauges, as the text its metrics
        endpoint serves (opaque here: the server re-exports it). Raises
        EngineFailed (EngineTimedOut) when the engine does not answer."""
        ...


class CodecDecoder(Protocol):
    """An audio codec's neural decoder, loaded."""

    def decode(self, codes: CodecCodes) -> bytes:
        """The samples of whole frames of codes: float32 little-endian mono,
        ``frame_samples`` per frame (blocking, CPU-heavy; safe from several threads)."""
        ...

    def close(self) -> None:
        """Free its memory; idempotent."""
        ...


class DecoderLoader(Protocol):
    def open(self, shape: CodecShape, source: DecoderSource) -> CodecDecoder:
        """Load the decoder for ``shape`` from ``source`` (blocking). Raises
        DecoderUnavailable naming what to fetch or install."""
        ...


class EngineProcess(Protocol):
    """One running engine child."""

    @property
    def pid(self) -> int: ...

    @property
    def chat(self) -> ChatEngine: ...

    def wait_ready(self) -> AsyncIterator[int]:
        """Yield resident bytes while loading; return once healthy.

        Raises EngineFailed (with the child's last output) if it exits or
        times out first; the child is then already stopped.
        """
        ...

    async def stop(self, grace: float | None = None) -> None:
        """Ask it to stop, then kill it after ``grace`` seconds (None: the
        launcher's default); returns once it is gone.

        Idempotent. Cancelled mid-way, it kills the child at once and re-raises.
        """
        ...

    async def responsive(self, timeout: float) -> bool:
        """Whether the running engine answers a request that its main loop
        serves within ``timeout`` seconds (False when it cannot be reached)."""
        ...

    async def wait_exit(self) -> EngineExit:
        """Return once the child has exited, for whatever reason, saying how."""
        ...


class EngineLauncher(Protocol):
    def check(self) -> None:
        """Raise EngineNotFound or EngineFailed now if no engine could be started (blocking)."""
        ...

    async def launch(self, spec: LaunchSpec) -> EngineProcess:
        """Spawn an engine for ``spec``. Raises EngineFailed if it cannot be started."""
        ...


class MarkupParser(Protocol):
    """One stream's tool-call markup healer: text in, visible text, reasoning
    and calls out (``CallEnded`` closes each call). Raises
    ReplyUnparsable when the reply exceeds its limits."""

    def feed(self, text: str) -> list[MarkupEvent]: ...

    def finish(self) -> list[MarkupEvent]: ...


class ServerTool(Protocol):
    """A tool the service runs for the model (python, terminal, web_search, fetch_url)."""

    @property
    def definition(self) -> Tool:
        """Its name, description and JSON-Schema parameters, as the model is shown them."""
        ...

    async def run(self, arguments: Mapping[str, object], *, timeout_s: float) -> ToolResult:
        """Never raises for the tool's own failures (a result with failed=True
        saying why); cancelled, it stops its child or request at once."""
        ...


class ToolBox(Protocol):
    """The server-side tools enabled on this service."""

    @property
    def names(self) -> frozenset[str]: ...

    def definitions(self) -> Mapping[str, Tool]:
        """Each tool's definition, by name."""
        ...

    def conversation(self) -> AbstractAsyncContextManager[Mapping[str, ServerTool]]:
        """The tools for one conversation (its own scratch space), all of its
        work stopped and its space removed when the context exits."""
        ...


class Telemetry(Protocol):
    """What the application tells operators about its work, as it happens
    (the server exports it as metrics). Every call is cheap and never
    raises; ``model`` is the id requests name it by."""

    def first_token(self, model: str, seconds: float) -> None:
        """A generation's first token came ``seconds`` after it was asked for (its queueing included)."""
        ...

    def generated(self, model: str, tokens: int, seconds: float) -> None:
        """A generation ended, having decoded ``tokens`` in ``seconds``."""
        ...

    def queue(self, model: str, waiting: int, running: int, slots: int) -> None:
        """The model's queue now: requests waiting, slots in use, slots in all."""
        ...

    def model_state(self, model: str, state: ModelState) -> None:
        """The model is now in ``state``."""
        ...

    def load_finished(self, model: str, seconds: float) -> None:
        """An engine for the model became ready ``seconds`` after its start was planned (restarts too)."""
        ...

    def downloaded(self, size: int) -> None:
        """``size`` more bytes came from the Hub."""
        ...


class NoTelemetry:
    """Telemetry that goes nowhere: the default where nobody listens."""

    def first_token(self, model: str, seconds: float) -> None:
        pass

    def generated(self, model: str, tokens: int, seconds: float) -> None:
        pass

    def queue(self, model: str, waiting: int, running: int, slots: int) -> None:
        pass

    def model_state(self, model: str, state: ModelState) -> None:
        pass

    def load_finished(self, model: str, seconds: float) -> None:
        pass

    def downloaded(self, size: int) -> None:
        pass
