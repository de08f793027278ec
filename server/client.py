"""The client side of the command line: chat, status, unload."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from llamagate.server.network import ClientTls
from llamagate.v1 import llamagate_pb2 as pb
from llamagate.v1 import llamagate_pb2_grpc as pb_grpc

_DIM, _RESET = ("\033[2m", "\033[0m") if sys.stderr.isatty() else ("", "")


def _stub(address: str, connect_timeout: float = 5.0, token: str = "",
          tls: ClientTls | None = None) -> pb_grpc.LlamaGateServiceStub:
    tls = tls or ClientTls()
    channel = _channel(address, tls)
    try:
        grpc.channel_ready_future(channel).result(timeout=connect_timeout)
    except grpc.FutureTimeoutError:
        raise Unreachable(address, tls.enabled) from None
    return pb_grpc.LlamaGateServiceStub(grpc.intercept_channel(channel, BearerToken(token)) if token else channel)


def _channel(address: str, tls: ClientTls) -> grpc.Channel:
    """A channel to ``address`` (any form serve listens on), over TLS when asked; Misconfigured when either is wrong."""
    from llamagate.server.address import parse_address
    from llamagate.server.tls import TlsError, channel_credentials

    try:
        target = parse_address(address, listening=False).target
    except ValueError as error:
        raise Misconfigured(f"cannot call {error}") from None
    try:
        credentials = channel_credentials(tls) if tls.enabled else None
    except TlsError as error:
        raise Misconfigured(str(error)) from None
    return grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)


class Misconfigured(Exception):
    """The address or a TLS file is wrong: the command exits 2."""


def _tls(args) -> ClientTls:
    """--tls-* over LLAMAGATE_TLS_CA / _CLIENT_CERT / _CLIENT_KEY (merged into the settings by the command line)."""
    settings = getattr(args, "settings", None)
    return settings.network.client_tls if settings else ClientTls()


def _token(args) -> str:
    """The token to send: --token-file's, else LLAMAGATE_TOKEN's, else none."""
    settings = getattr(args, "settings", None)
    return getattr(args, "token", None) or (settings.env.get("LLAMAGATE_TOKEN", "").strip() if settings else "")


def read_token_file(path: str) -> str:
    """A file's token: its first line that is neither blank nor a ``#`` comment."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    token = next((line.strip() for line in lines if line.strip() and not line.strip().startswith("#")), "")
    if not token:
        raise ValueError(f"{path} holds no token")
    return token


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Sends ``authorization: Bearer TOKEN`` with every call. Metadata, not
    call credentials: grpc sends those only over a secure channel."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _with_token(self, details: Any) -> Any:
        metadata = (*(details.metadata or ()), *self._metadata)
        return _CallDetails(details.method, details.timeout, metadata, details.credentials, details.wait_for_ready,
                            details.compression)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)


class Unreachable(Exception):
    def __str__(self) -> str:
        address, tls = (*self.args, False)[:2]
        if tls:
            return (f"cannot reach the service at {address} over TLS (is `llamagate serve` running, with TLS, and"
                    " with a certificate for this host that your CA signed?)")
        return f"cannot reach the service at {address} (is `llamagate serve` running?)"


def _fail(error: grpc.RpcError | Unreachable) -> int:
    if isinstance(error, Unreachable):
        print(f"llamagate: {error}", file=sys.stderr)
    else:
        print(f"llamagate: {error.code().name}: {error.details()}", file=sys.stderr)
    return 1


def wait_until_ready(stub: pb_grpc.LlamaGateServiceStub, timeout: float, model: str = "") -> pb.ModelInfo:
    """Wait while a model is LOADING (e.g. right after `serve` started)."""
    deadline = time.monotonic() + timeout
    while True:
        info = stub.GetStatus(pb.GetStatusRequest(model=model), timeout=10).model
        if info.state != pb.MODEL_STATE_LOADING or time.monotonic() > deadline:
            return info
        time.sleep(0.25)


def chat(args) -> int:
    messages = [pb.Message(role=pb.ROLE_SYSTEM, text=args.system)] if args.system else []
    messages.append(pb.Message(role=pb.ROLE_USER, text=args.prompt))
    sampling = pb.Sampling(max_tokens=args.max_tokens, temperature=args.temperature)
    request = pb.GenerateRequest(messages=messages, sampling=sampling, model=args.model)
    if args.tool:
        request.server_tools.names.extend(args.tool)
    try:
        stub = _stub(args.address, args.connect_timeout, _token(args), _tls(args))
        wait_until_ready(stub, args.wait, args.model)
        for event in stub.Generate(request):
            kind = event.WhichOneof("event")
            if kind == "reasoning_delta":
                print(f"{_DIM}{event.reasoning_delta}{_RESET}", end="", file=sys.stderr, flush=True)
            elif kind == "content_delta":
                print(event.content_delta, end="", flush=True)
            elif kind == "tool_started":
                print(f"{_DIM}[{event.tool_started.status}]{_RESET}", file=sys.stderr, flush=True)
            elif kind == "tool_finished":
                failed = " (failed)" if event.tool_finished.failed else ""
                print(f"{_DIM}{event.tool_finished.result.rstrip()}{failed}{_RESET}", file=sys.stderr, flush=True)
            elif kind == "done":
                done = event.done
                reason = pb.FinishReason.Name(done.finish_reason).removeprefix("FINISH_REASON_").lower()
                print(
                    f"\n{_DIM}[{reason}; {done.usage.completion_tokens} tokens,"
                    f" {done.timings.predicted_per_second:.1f} tok/s]{_RESET}",
                    file=sys.stderr,
                )
    except (grpc.RpcError, Unreachable) as error:
        return _fail(error)
    return 0


def say(args) -> int:
    """Stream a Synthesize into a WAV file as the audio comes; the header's
    sizes are set at the end (to standard output they stay "unknown")."""
    sampling = pb.Sampling(max_tokens=args.max_tokens, temperature=args.temperature)
    request = pb.SynthesizeRequest(text=args.text, voice=args.voice, sampling=sampling, model=args.model,
                                   encoding=pb.AUDIO_ENCODING_WAV)
    to_stdout = args.out == "-"
    try:
        if args.grammar:
            request.grammar = Path(args.grammar).read_text()
    except OSError as error:
        print(f"llamagate: cannot read {args.grammar}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        stub = _stub(args.address, args.connect_timeout, _token(args), _tls(args))
        wait_until_ready(stub, args.wait, args.model)
        with (open(sys.stdout.fileno(), "wb", closefd=False) if to_stdout else open(args.out, "wb")) as out:
            for event in stub.Synthesize(request):
                if event.WhichOneof("event") == "audio":
                    out.write(event.audio.data)
                    out.flush()
                else:
                    done = event.done
                    if not to_stdout:
                        out.seek(0)
                        out.write(done.wav_header)
                    print(f"{_DIM}[{done.audio_seconds:.2f} s of audio at {done.sample_rate} Hz;"
                          f" {done.generated_tokens} tokens; first audio after {done.first_audio_seconds:.2f} s]"
                          f"{_RESET}", file=sys.stderr)
    except (grpc.RpcError, Unreachable) as error:
        if not to_stdout:  # no half-written file that looks like an answer
            with contextlib.suppress(OSError):
                os.remove(args.out)
        return _fail(error)
    except OSError as error:
        print(f"llamagate: cannot write {args.out}: {error.strerror}", file=sys.stderr)
        return 1
    if not to_stdout:
        print(args.out)
    return 0


def status(args) -> int:
    try:
        stub = _stub(args.address, args.connect_timeout, _token(args), _tls(args))
        entries = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    except (grpc.RpcError, Unreachable) as error:
        return _fail(error)
    if not entries:
        print("no model loaded")
    for entry in entries:
        _print_entry(entry)
    return 0


def _print_entry(entry: pb.ModelEntry) -> None:
    info = entry.info
    state = pb.ModelState.Name(info.state).removeprefix("MODEL_STATE_").lower()
    mode = pb.ModelMode.Name(info.mode).removeprefix("MODEL_MODE_").lower()
    flags = [f for f, on in (("configured", entry.configured), ("pinned", entry.pinned)) if on]
    print(f"{info.id} ({info.architecture or mode}) {state}" + (f" [{', '.join(flags)}]" if flags else ""))
    if info.state == pb.MODEL_STATE_EMPTY:
        return
    caps = [name for name in ("reasoning", "tools", "vision") if getattr(info.capabilities, name)]
    memory = ", ".join(f"{m.device} {m.bytes >> 20} MiB" for m in entry.memory) or "unknown"
    print(f"  path     {info.path}")
    print(f"  context  {info.context_length} of native {info.native_context_length}, {info.parallel} slot(s)")
    print(f"  serves   {mode}" + (f": {', '.join(caps)}" if caps and mode == "chat" else ""))
    print(f"  memory   {memory}; {entry.in_flight} request(s) in flight, idle {entry.idle_seconds:.0f} s")
    if info.last_error:
        print(f"  error    {info.last_error}")
    print(f"  pid      {info.pid}")


def unload(args) -> int:
    try:
        stub = _stub(args.address, args.connect_timeout, _token(args), _tls(args))
        reply = stub.UnloadModel(pb.UnloadModelRequest(model=args.model), timeout=30)
    except (grpc.RpcError, Unreachable) as error:
        return _fail(error)
    print(f"stopped llama-server pid {reply.pid}" if reply.was_loaded else "nothing was loaded")
    return 0


def load(args) -> int:
    """LoadModel with its phases on stderr (download progress on one line) and the model on stdout."""
    from llamagate.domain.errors import LlamagateError
    from llamagate.server.cli import model_source

    try:
        source = model_source(args.model, revision=args.revision) if args.model else None
    except LlamagateError as error:
        print(f"llamagate: {error}", file=sys.stderr)
        return 1
    if source is None and not args.name:
        print("llamagate: load needs a MODEL (a file or REPO[:VARIANT]), or --as ID of a configured model",
              file=sys.stderr)
        return 1
    request = pb.LoadModelRequest(model=args.name)
    if source is not None:
        request.options.CopyFrom(pb.LoadOptions(context_length=args.ctx, parallel=args.parallel,
                                                rpc_workers=args.rpc_worker))
    if isinstance(source, str):
        request.path = source
    elif source is not None:
        request.hub.CopyFrom(pb.HubSource(repo=source.repo, variant=source.variant, revision=source.revision))
    try:
        for event in _stub(args.address, args.connect_timeout, _token(args), _tls(args)).LoadModel(request):
            phase = pb.LoadPhase.Name(event.phase).removeprefix("LOAD_PHASE_").lower()
            end = "\r" if event.phase == pb.LOAD_PHASE_DOWNLOADING and sys.stderr.isatty() else "\n"
            print(f"{_DIM}{phase}: {event.message}{_RESET}", end=end, file=sys.stderr, flush=True)
            if event.phase == pb.LOAD_PHASE_READY:
                print(f"{event.model.id} ready: context {event.model.context_length}, path {event.model.path}")
    except (grpc.RpcError, Unreachable) as error:
        return _fail(error)
    return 0
