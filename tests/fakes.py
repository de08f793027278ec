"""Fakes of every port in domain/ports.py: same types, same errors, no process.

They behave like the real parts where the slot can tell (a stopped engine's
streams break like a closed socket, a rejected model exits before it is
healthy, ``stop`` is idempotent and kills at once when cancelled) and record
what happened in plain lists that tests assert on. They satisfy the ports
by shape; ``_conforms`` below lets the type checker prove it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from array import array
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from llamagate.domain.audio_codecs import CodecCodes, CodecShape
from llamagate.domain.capabilities import ServerCapabilities
from llamagate.domain.chat import ChatCall, ChatChunk, FinishReason, Timings, Tool, Usage
from llamagate.domain.embeddings import Embeddings, EmbedRequest, Ranking, RerankRequest, rank
from llamagate.domain.errors import (
    ContextExceeded,
    DecoderUnavailable,
    EngineFailed,
    EngineRejected,
    InvalidModel,
    ModelNotFound,
    TemplateError,
)
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.hyperparameters import Hyperparameters
from llamagate.domain.launch import LaunchSpec
from llamagate.domain.model_facts import ModelFacts, MoreBytes
from llamagate.domain.ports import (
    ChatEngine,
    CodecDecoder,
    DecoderLoader,
    EngineExit,
    EngineLauncher,
    EngineProcess,
    MemoryProbe,
    ModelInspector,
    ServerTool,
    TemplateRenderer,
    TemplateValue,
    ToolBox,
)
from llamagate.domain.speech import DecoderSource, TokenCall, TokenChunk
from llamagate.domain.tools import ToolResult

GIB = 1 << 30


def model_facts(path: str = "/models/SmolLM2-135M-Instruct.Q4_1.gguf", *, size: int = 90 << 20,
                context: int = 8192) -> ModelFacts:
    """A SmolLM2-shaped model: 30 layers, 9 heads, 3 KV heads of 64."""
    hp = Hyperparameters(context_length=context, block_count=30, head_count=9, head_count_kv=3,
                         embedding_length=576, feed_forward_length=1536)
    return ModelFacts(path, "llama", context, "{% for m in messages %}{{ m.content }}{% endfor %}", size, hp)


class FakeInspector:
    def __init__(self, *models: ModelFacts, header_bytes: int = 3 << 20) -> None:
        self.models = {m.path: m for m in models}
        self.calls: list[str] = []
        self.header_bytes = header_bytes

    def inspect(self, path: str) -> ModelFacts:
        self.calls.append(path)
        if path not in self.models:
            raise ModelNotFound(f"model file not found: {path}")
        return self.models[path]

    def inspect_prefix(self, prefix: bytes, path: str, size_bytes: int) -> ModelFacts | MoreBytes:
        """A model's header is its first `header_bytes` here; ``path`` names it among ``models``."""
        self.calls.append(path)
        if path not in self.models:
            raise InvalidModel(f"{path} is not a valid GGUF model")
        if len(prefix) < self.header_bytes:
            return MoreBytes(self.header_bytes - len(prefix))
        return replace(self.models[path], size_bytes=size_bytes)


class FakeMemory:
    def __init__(self, gpus: list[GpuInfo] | None = None, host_free: int = 16 * GIB) -> None:
        self._gpus = gpus or []
        self.host_free = host_free  # a test may change it
        self.probes = 0

    def gpus(self) -> list[GpuInfo]:
        self.probes += 1
        return list(self._gpus)

    def host_free_bytes(self) -> int:
        return self.host_free


def reply(*texts: str) -> list[ChatChunk]:
    """What llama-server streams for an answer: deltas, then finish reason, usage and timings."""
    n = len(texts)
    return [ChatChunk(content=t) for t in texts] + [
        ChatChunk(finish_reason=FinishReason.STOP, usage=Usage(5, n, 5 + n), timings=Timings(predicted_n=n))]


_Chunk = TypeVar("_Chunk")


class FakeChat:
    """One engine's API. ``hold`` pauses every stream after its first chunk
    until set; a stream of a dead engine breaks like a closed socket."""

    def __init__(self, engine: FakeEngine) -> None:
        self._engine = engine
        self.script: list[ChatChunk] = reply("Hello", " there")
        self.scripts: list[list[ChatChunk]] = []  # one per stream, in order, before ``script``
        self.overflow_after: int | None = None  # streams after this many: the prompt does not fit
        self.calls: list[ChatCall] = []
        self.capabilities = ServerCapabilities()
        self.hold: asyncio.Event | None = None
        self.streaming = 0  # streams open now
        self.embeds: list[EmbedRequest] = []
        self.reranks: list[RerankRequest] = []
        self.vocabulary = FakeVocabulary()  # a text model's, unless a test gives a speech model's
        self.token_script: list[TokenChunk] = [TokenChunk((1, 2)), TokenChunk(finish_reason=FinishReason.STOP)]
        self.token_calls: list[TokenCall] = []

    async def stream_chat(self, call: ChatCall) -> AsyncIterator[ChatChunk]:
        self.calls.append(call)
        if self.overflow_after is not None and len(self.calls) > self.overflow_after:
            raise ContextExceeded("the request needs 9999 tokens; a slot holds 2048", prompt_tokens=9999,
                                  context_length=2048)
        async with contextlib.aclosing(self._played(self.scripts.pop(0) if self.scripts else self.script)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def stream_tokens(self, call: TokenCall) -> AsyncGenerator[TokenChunk, None]:
        """``token_script``'s chunks; ``hold`` pauses after the first, as for chat."""
        self.token_calls.append(call)
        async with contextlib.aclosing(self._played(self.token_script)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _played(self, script: Sequence[_Chunk]) -> AsyncGenerator[_Chunk, None]:
        """A stream's chunks: ``hold`` pauses it after the first; a dead engine breaks it."""
        self.streaming += 1
        try:
            for i, chunk in enumerate(script):
                if i == 1 and self.hold is not None:
                    await self._engine.until_exit_or(self.hold)
                if self._engine.exit is not None:
                    raise EngineFailed("lost connection to llama-server: the connection was reset")
                yield chunk
        finally:
            self.streaming -= 1

    async def tokenize(self, text: str) -> list[int]:
        await self._answering()
        return self.vocabulary.tokenize(text)

    async def detokenize(self, tokens: Sequence[int]) -> str:
        await self._answering()
        return self.vocabulary.detokenize(tokens)

    async def count_tokens(self, call: ChatCall) -> int:
        """A stand-in template: 3 tokens around each message, one per word."""
        self.calls.append(call)
        if self._engine.exit is not None:
            raise EngineFailed("lost connection to llama-server: connection refused")
        return sum(3 + len(m.text.split()) for m in call.messages)

    async def server_capabilities(self) -> ServerCapabilities:
        return self.capabilities

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """Eight numbers from each text's SHA-256 (equal texts, equal vectors);
        ``hold`` makes it wait first. Tokens: one per word."""
        self.embeds.append(request)
        await self._answering()
        vectors = tuple(_fake_vector(text, request.normalize) for text in request.texts)
        return Embeddings(vectors, sum(len(text.split()) for text in request.texts))

    async def rerank(self, request: RerankRequest) -> Ranking:
        """Scores: the words a document shares with the query."""
        self.reranks.append(request)
        await self._answering()
        query = set(request.query.lower().split())
        scores = [float(len(query & set(d.lower().split()))) for d in request.documents]
        tokens = sum(len(request.query.split()) + len(d.split()) for d in request.documents)
        return Ranking(rank(scores)[: request.top_n or None], tokens)

    async def engine_metrics(self) -> str:
        """One gauge, as llama-server spells it: the streams open now."""
        if self._engine.exit is not None:
            raise EngineFailed("lost connection to llama-server: connection refused")
        return f"# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing {self.streaming}\n"

    async def _answering(self) -> None:
        if self.hold is not None:
            await self._engine.until_exit_or(self.hold)
        if self._engine.exit is not None:
            raise EngineFailed("lost connection to llama-server: the connection was reset")


@dataclass
class FakeVocabulary:
    """A tokenizer: ``specials`` are one token each; so is ``<custom_token_N>``
    (id ``custom_base + N``) when ``custom_base`` is set; any other
    character is one token (its code point, past the specials). Ids past
    ``size`` are refused as llama-server refuses them (a 500)."""

    specials: Mapping[str, int] = field(default_factory=dict)
    custom_base: int | None = None
    size: int = 49152

    def tokenize(self, text: str) -> list[int]:
        ids: list[int] = []
        for special, plain in re.findall(r"(<[^<>]+>)|(.)", text, flags=re.S):
            if special in self.specials:
                ids.append(self.specials[special])
            elif (custom := re.fullmatch(r"<custom_token_(\d+)>", special)) and self.custom_base is not None:
                ids.append(self.custom_base + int(custom.group(1)))
            else:
                ids.extend(ord(c) % 1000 for c in (special or plain))
        return ids

    def detokenize(self, tokens: Sequence[int]) -> str:
        if any(not 0 <= t < self.size for t in tokens):
            raise EngineRejected("llama-server's tokenizer refused it: invalid token id")
        names = {v: k for k, v in self.specials.items()}
        out = []
        for t in tokens:
            if t in names:
                out.append(names[t])
            elif self.custom_base is not None and t >= self.custom_base:
                out.append(f"<custom_token_{t - self.custom_base}>")
            else:
                out.append(chr(t))
        return "".join(out)


def snac_vocabulary() -> FakeVocabulary:
    """Orpheus': Llama 3's 128,256 tokens, then <custom_token_N>."""
    return FakeVocabulary(specials={"<|eot_id|>": 128009}, custom_base=128256, size=128256 + 10 + 7 * 4096)


def dac_vocabulary() -> FakeVocabulary:
    """OuteTTS 1.0's: <|c1_N|> and <|c2_N|> from 151,000 on."""
    codes = {f"<|c{book + 1}_{n}|>": 151_000 + book * 1024 + n for book in range(2) for n in range(1024)}
    return FakeVocabulary(specials={**codes, "<|im_end|>": 150_000, "<|audio_end|>": 150_001}, size=160_000)


class FakeDecoder:
    """A decoder whose every sample of a frame is that frame's first code
    / codebook size: chunks can be checked against the codes sent.
    ``hold`` makes decode wait (it runs in a thread) until set."""

    def __init__(self, shape: CodecShape) -> None:
        self.shape = shape
        self.calls: list[CodecCodes] = []
        self.closed = False
        self.hold: threading.Event | None = None

    def decode(self, codes: CodecCodes) -> bytes:
        self.calls.append(codes)
        if self.hold is not None:
            self.hold.wait(10)
        values = array("f", (code / self.shape.codebook_size for code in codes[0] for _ in range(self.shape.frame_samples)))
        return values.tobytes()

    def close(self) -> None:
        self.closed = True


class FakeDecoderLoader:
    """Opens FakeDecoders; a source whose path is ``missing`` is not there."""

    def __init__(self) -> None:
        self.opened: list[FakeDecoder] = []

    def open(self, shape: CodecShape, source: DecoderSource) -> FakeDecoder:
        if source.path == "missing":
            raise DecoderUnavailable(f"the {shape.codec.value} decoder missing is not a file")
        self.opened.append(FakeDecoder(shape))
        return self.opened[-1]


def _fake_vector(text: str, normalize: bool) -> tuple[float, ...]:
    values = [(b - 127.5) / 127.5 for b in hashlib.sha256(text.encode()).digest()[:8]]
    norm = sum(v * v for v in values) ** 0.5 if normalize else 1.0
    return tuple(v / norm for v in values)


class FakeEngine:
    def __init__(self, pid: int, spec: LaunchSpec, *, ready: asyncio.Event | None, reject: str = "",
                 stop_gate: asyncio.Event | None = None) -> None:
        self.pid = pid
        self.spec = spec
        self.chat: FakeChat = FakeChat(self)
        self.exit: EngineExit | None = None
        self.stops = 0
        self.stop_graces: list[float | None] = []
        self.frozen = False  # SIGSTOP: alive, but answers nothing
        self._exited = asyncio.Event()
        self._ready = ready  # None: healthy at once
        self._reject = reject  # non-empty: exits before it is healthy, saying this
        self._stop_gate = stop_gate  # set: stop() waits for it (a slow SIGTERM)

    def _end(self, how: str, output: str = "") -> None:
        if self.exit is None:
            self.exit = EngineExit(how, output)
            self._exited.set()

    def crash(self, how: str = "killed by SIGKILL") -> None:
        """Die on our own, as the OOM killer would have it."""
        self._end(how, "Killed")

    def freeze(self) -> None:
        """Stop answering while alive, as SIGSTOP or a deadlock would have it."""
        self.frozen = True

    async def responsive(self, timeout: float) -> bool:
        if self.exit is not None:
            return False
        if self.frozen:
            await asyncio.sleep(timeout)  # the request times out
            return False
        return True

    async def until_exit_or(self, event: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._exited.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def wait_ready(self) -> AsyncIterator[int]:
        yield 1 << 20
        if self._reject:
            self._end("exit code 1", self._reject)
            raise EngineFailed(f"llama-server exited with code 1 before it was ready; its last output:\n{self._reject}")
        if self._ready is not None:
            await self.until_exit_or(self._ready)
        if self.exit is not None:
            raise EngineFailed(f"llama-server exited ({self.exit.how}) before it was ready")
        yield 90 << 20

    async def stop(self, grace: float | None = None) -> None:
        self.stops += 1
        self.stop_graces.append(grace)
        try:
            if self._stop_gate is not None and self.exit is None:
                await self.until_exit_or(self._stop_gate)
        finally:  # cancelled mid-stop: killed at once, like the real one
            self._end("stopped" if self._stop_gate is None or self._stop_gate.is_set() else "killed by SIGKILL")

    async def wait_exit(self) -> EngineExit:
        await self._exited.wait()
        assert self.exit is not None
        return self.exit


@dataclass
class FakeLauncher:
    """Launches FakeEngines. Set ``check_error`` to fail every check,
    ``launch_error`` to fail the next launch, ``hold_ready`` to make the next
    engines wait for ``ready.set()``, ``reject_next`` to make the next ones
    exit before they are healthy, ``stop_gate`` to make stops wait."""

    check_error: Exception | None = None
    launch_error: Exception | None = None
    hold_ready: bool = False
    reject_next: list[str] = field(default_factory=list)
    stop_gate: asyncio.Event | None = None
    launched: list[LaunchSpec] = field(default_factory=list)
    engines: list[FakeEngine] = field(default_factory=list)
    checks: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    next_pid: int = 4000
    server_caps: ServerCapabilities = field(default_factory=ServerCapabilities)  # what new engines' /props say
    vocabulary: FakeVocabulary | None = None  # new engines' tokenizer (None: a text model's)

    def check(self) -> None:
        self.checks += 1
        if self.check_error is not None:
            raise self.check_error

    async def launch(self, spec: LaunchSpec) -> FakeEngine:
        if self.launch_error is not None:  # the next launch fails: a spawn error is rarely permanent
            error, self.launch_error = self.launch_error, None
            raise error
        self.launched.append(spec)
        self.next_pid += 1
        reject = self.reject_next.pop(0) if self.reject_next else ""
        engine = FakeEngine(self.next_pid, spec, ready=self.ready if self.hold_ready else None, reject=reject,
                            stop_gate=self.stop_gate)
        engine.chat.capabilities = self.server_caps
        if self.vocabulary is not None:
            engine.chat.vocabulary = self.vocabulary
        self.engines.append(engine)
        return engine

    def alive(self) -> list[FakeEngine]:
        return [e for e in self.engines if e.exit is None]


Records = Sequence[Mapping[str, TemplateValue]]


class FakeRenderer:
    """A template renderer whose output is ``answer(messages, tools, extra)``
    (None: the template fails); it records every render."""

    def __init__(self, answer: Callable[[Records, Records, Mapping[str, TemplateValue]], str | None]) -> None:
        self.answer = answer
        self.renders: list[tuple[str, Records, Records, Mapping[str, TemplateValue]]] = []

    def render(self, template: str, messages: Records, tools: Records, *, add_generation_prompt: bool,
               extra: Mapping[str, TemplateValue]) -> str:
        self.renders.append((template, messages, tools, extra))
        output = self.answer(messages, tools, extra)
        if output is None:
            raise TemplateError("the fake template failed")
        return output


class FakeTool:
    """A server-side tool answering from ``answers`` (by the arguments' JSON);
    ``hold`` makes it wait (to be cancelled or timed out)."""

    def __init__(self, name: str, answers: Mapping[str, ToolResult] | None = None, *,
                 hold: asyncio.Event | None = None) -> None:
        self.definition = Tool(name, f"the {name} tool", '{"type": "object", "properties": {}}')
        self.answers = dict(answers or {})
        self.hold = hold
        self.runs: list[tuple[dict[str, object], float]] = []
        self.cancelled = 0

    async def run(self, arguments: Mapping[str, object], *, timeout_s: float) -> ToolResult:
        self.runs.append((dict(arguments), timeout_s))
        try:
            if self.hold is not None:
                await self.hold.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.answers.get(json.dumps(dict(arguments), sort_keys=True), ToolResult("ok"))


class FakeToolBox:
    """The enabled tools; counts conversations opened and closed."""

    def __init__(self, *tools: FakeTool) -> None:
        self.tools = {t.definition.name: t for t in tools}
        self.opened = self.closed = 0

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.tools)

    def definitions(self) -> Mapping[str, Tool]:
        return {name: tool.definition for name, tool in self.tools.items()}

    @contextlib.asynccontextmanager
    async def conversation(self) -> AsyncIterator[Mapping[str, ServerTool]]:
        self.opened += 1
        try:
            yield dict(self.tools)
        finally:
            self.closed += 1


def _conforms(inspector: FakeInspector, memory: FakeMemory, launcher: FakeLauncher, engine: FakeEngine,
              renderer: FakeRenderer, tool: FakeTool, toolbox: FakeToolBox, decoders: FakeDecoderLoader,
              decoder: FakeDecoder) -> None:
    """Never called: the type checker proves each fake satisfies its port."""
    ports: tuple[ModelInspector, MemoryProbe, EngineLauncher, EngineProcess, ChatEngine, TemplateRenderer,
                 ServerTool, ToolBox, DecoderLoader, CodecDecoder] = (
        inspector, memory, launcher, engine, engine.chat, renderer, tool, toolbox, decoders, decoder)
    del ports


# -- The Hub (issue 11) ----------------------------------------------------------------
# Imported here rather than at the top so that this block stays apart from the header.

import hashlib

from llamagate.domain.errors import NotCached, PermissionDenied, SourceUnavailable
from llamagate.domain.hub import HubFile, HubListing, HubSource
from llamagate.domain.ports import DiskSpace, ModelHub


class FakeHub:
    """The Hub over ``repos`` ({repo: {path: bytes}}) and an in-memory cache,
    raising what HfHub raises.

    ``gated`` repos list publicly but need ``access_token`` for their bytes;
    ``private`` ones need it for everything (ModelNotFound otherwise, as on
    the Hub); a token not in ``tokens`` is refused; ``down`` makes every call
    SourceUnavailable. A download fetches half of its file, waits for
    ``hold`` (an asyncio.Event) when one is set, then fetches the rest: a test
    can cancel it there, and the half stays for the next call. A download of
    a file in ``corrupt`` fails its checksum once (the half is dropped).
    ``range_reads`` and ``downloads`` record each call that fetched bytes.
    """

    def __init__(self, repos: Mapping[str, Mapping[str, bytes]], *, cache_dir: str = "/fake-hf-cache",
                 offline: bool = False, gated: Sequence[str] = (), private: Sequence[str] = (),
                 access_token: str = "hf_fake_access") -> None:
        self.repos = {repo: dict(files) for repo, files in repos.items()}
        self.cache_dir, self.offline = cache_dir, offline
        self.gated, self.private = set(gated), set(private)
        self.access_token = access_token
        self.tokens = {access_token}
        self.down = False
        self.hold: asyncio.Event | None = None
        self.whole: set[tuple[str, str]] = set()  # (repo, path) in the cache
        self.partial: dict[tuple[str, str], int] = {}  # (repo, path) → bytes an interrupted download left
        self.corrupt: set[tuple[str, str]] = set()
        self.range_reads: list[tuple[str, str, int, int]] = []  # (repo, path, start, end)
        self.downloads: list[tuple[str, str, int]] = []  # (repo, path, the first byte fetched)
        self.cancelled = 0
        self._digests: dict[int, tuple[bytes, str]] = {}  # id(content) → (content, its sha256), hashed once

    def commit(self, repo: str) -> str:
        files = self.repos.get(repo, {})
        return hashlib.sha1(repr((repo, sorted((p, self._sha256(d)) for p, d in files.items()))).encode()).hexdigest()

    def listing(self, source: HubSource) -> HubListing:
        if self.offline:
            return self._cached_listing(source)
        files = self._repo(source, metadata=True)
        if source.revision not in ("", "main", self.commit(source.repo)):
            raise ModelNotFound(f"{source.repo} has no revision {source.revision!r} on the Hub (fake)")
        return HubListing(source.repo, self.commit(source.repo),
                          tuple(self._file(path, data) for path, data in sorted(files.items())))

    def cached_bytes(self, listing: HubListing) -> Mapping[str, int]:
        held = {f.path: f.size if (listing.repo, f.path) in self.whole else self.partial.get((listing.repo, f.path), 0)
                for f in listing.files if f.path.lower().endswith(".gguf")}
        return {path: n for path, n in held.items() if n > 0}

    def local_path(self, listing: HubListing, path: str) -> str | None:
        if (listing.repo, path) not in self.whole:
            return None
        return f"{self.cache_dir}/models--{listing.repo.replace('/', '--')}/snapshots/{listing.commit}/{path}"

    def read_range(self, source: HubSource, listing: HubListing, path: str, start: int, end: int) -> bytes:
        data = self._content(source, path)
        self.range_reads.append((source.repo, path, start, end))
        return data[start:end]

    async def download(self, source: HubSource, listing: HubListing, file: HubFile,
                       progress: Callable[[int], None]) -> str:
        found = self.local_path(listing, file.path)
        if found is not None:
            return found
        data, key = self._content(source, file.path), (source.repo, file.path)
        have = self.partial.get(key, 0)
        self.downloads.append((source.repo, file.path, have))
        try:
            if have < len(data) // 2:
                self.partial[key] = len(data) // 2
                progress(len(data) // 2 - have)
                have = len(data) // 2
                if self.hold is not None:
                    await self.hold.wait()
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if key in self.corrupt:
            self.corrupt.discard(key)
            del self.partial[key]
            raise SourceUnavailable(f"the download of {file.path} from {source.repo} did not match its sha256"
                                    " (fake); the partial file was removed; try again")
        progress(len(data) - have)
        self.partial.pop(key, None)
        self.whole.add(key)
        return str(self.local_path(listing, file.path))

    def _file(self, path: str, data: bytes) -> HubFile:
        lfs = path.lower().endswith(".gguf")
        return HubFile(path, len(data), self._sha256(data) if lfs else "")

    def _sha256(self, data: bytes) -> str:
        if id(data) not in self._digests:  # holding the content keeps its id from being reused
            self._digests[id(data)] = (data, hashlib.sha256(data).hexdigest())
        return self._digests[id(data)][1]

    def _repo(self, source: HubSource, *, metadata: bool = False) -> dict[str, bytes]:
        if self.down:
            raise SourceUnavailable("could not reach the Hub (fake): it is down")
        token = source.token or None
        if token is not None and token not in self.tokens:
            raise PermissionDenied("the Hub (fake) refused the token")
        files = self.repos.get(source.repo)
        if files is None or (source.repo in self.private and token != self.access_token):
            raise ModelNotFound(f"no repository {source.repo} on the Hub (fake); a private repository looks the same"
                                " without a token that may read it")
        if source.repo in self.gated and not metadata and token != self.access_token:
            raise PermissionDenied(f"{source.repo} is a gated repository: its files need the token of an account"
                                   " that accepted its conditions")
        return files

    def _content(self, source: HubSource, path: str) -> bytes:
        if self.offline:
            raise NotCached(f"{path} of {source.repo} is not in the local Hub cache at {self.cache_dir},"
                            " and HF_HUB_OFFLINE is set")
        files = self._repo(source)
        if path not in files:
            raise ModelNotFound(f"{source.repo} has no file {path} on the Hub (fake)")
        return files[path]

    def _cached_listing(self, source: HubSource) -> HubListing:
        commit = self.commit(source.repo)
        files = self.repos.get(source.repo, {})
        cached = tuple(self._file(p, files[p]) for p in sorted(files) if (source.repo, p) in self.whole)
        if not cached or (source.revision not in ("", "main") and not commit.startswith(source.revision)):
            raise NotCached(f"{source.repo} (revision {source.revision or 'main'}) is not in the local Hub cache"
                            f" at {self.cache_dir}, and HF_HUB_OFFLINE is set")
        return HubListing(source.repo, commit, cached)


class FakeDiskSpace:
    """``free`` bytes anywhere, or per directory in ``by_directory`` (the
    longest matching prefix wins); ``asked`` records each directory asked."""

    def __init__(self, free: int = 100 * GIB, by_directory: Mapping[str, int] | None = None) -> None:
        self.free = free
        self.by_directory = dict(by_directory or {})
        self.asked: list[str] = []

    def free_bytes(self, directory: str) -> int:
        self.asked.append(directory)
        prefixes = [d for d in self.by_directory if directory == d or directory.startswith(d.rstrip("/") + "/")]
        return self.by_directory[max(prefixes, key=len)] if prefixes else self.free


def _conforms_hub(hub: FakeHub, disk: FakeDiskSpace) -> None:
    """Never called: the type checker proves the Hub's fakes satisfy their ports."""
    ports: tuple[ModelHub, DiskSpace] = (hub, disk)
    del ports


# -- RPC workers (issue 15) --------------------------------------------------------------

from llamagate.domain.ports import WorkerProbe
from llamagate.domain.rpc_workers import WorkerDevice, WorkerReport, WorkerState


class FakeWorkerProbe:
    """ggml RPC workers by address, each READY with its devices unless its
    address is in ``down`` (UNREACHABLE) or ``busy`` (BUSY); ``probes``
    records every address asked, in order."""

    def __init__(self, workers: Mapping[str, Sequence[WorkerDevice]]) -> None:
        self.devices = {address: tuple(devices) for address, devices in workers.items()}
        self.down: set[str] = set()
        self.busy: set[str] = set()
        self.probes: list[str] = []

    def probe(self, address: str, timeout_s: float) -> WorkerReport:
        self.probes.append(address)
        if address in self.down or address not in self.devices:
            return WorkerReport(address, WorkerState.UNREACHABLE, detail="Connection refused")
        if address in self.busy:
            return WorkerReport(address, WorkerState.BUSY, detail="no answer to HELLO")
        return WorkerReport(address, WorkerState.READY, self.devices[address], "7.0.0")


def _conforms_workers(probe: FakeWorkerProbe) -> None:
    """Never called: the type checker proves the fake satisfies its port."""
    port: WorkerProbe = probe
    del port
