"""The ``llamagate`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from llamagate.server.logs import configure_logging
from llamagate.server.observability import LOG_FORMATS, metrics_address
from llamagate.server.settings import MIB, Settings

_EPILOG = ("Environment: LLAMAGATE_ADDRESS (default address), LLAMA_SERVER_PATH, LLAMA_CPP_DIR, "
           "LLAMAGATE_CACHE_DIR, LLAMAGATE_MAX_MESSAGE_MB, LLAMAGATE_MODEL_ROOTS (where model files may be read), "
           "LLAMAGATE_TOKEN (the token chat/load/status/unload send), LLAMAGATE_METRICS_ADDRESS, "
           "LLAMAGATE_LOG_FORMAT, LLAMAGATE_TLS_CERT/_KEY/_CLIENT_CA (serve), LLAMAGATE_TLS_CA/_CLIENT_CERT/_CLIENT_KEY "
           "(the commands), LLAMAGATE_SHUTDOWN_GRACE_S.")


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env(os.environ)  # the one read of the environment
    except ValueError as error:
        print(f"llamagate: {error}", file=sys.stderr)
        return 2
    parser = _parser(settings)
    args = parser.parse_args(argv)
    args.settings = _apply_options(settings, args)
    configure_logging(args.settings.observability.log_format, verbose=args.verbose)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        return 130


def _apply_options(settings: Settings, args: argparse.Namespace) -> Settings:
    """Command-line options win over the environment."""
    megabytes = getattr(args, "max_message_mb", None)
    return replace(
        settings,
        address=getattr(args, "listen", None) or settings.address,
        llama_cpp_dir=getattr(args, "llama_cpp_dir", None) or settings.llama_cpp_dir,
        max_message_bytes=megabytes * MIB if megabytes else settings.max_message_bytes,
        network=_network_options(settings.network, args),
        observability=replace(settings.observability,
                              metrics=getattr(args, "metrics", None) or settings.observability.metrics,
                              log_format=getattr(args, "log_format", None) or settings.observability.log_format),
    )


def _network_options(network, args: argparse.Namespace):
    """serve's --tls-* name its own certificate; the client commands' name theirs."""
    def pick(option: str, default: str) -> str:
        return getattr(args, option, None) or default

    server, client = network.server_tls, network.client_tls
    return replace(
        network,
        server_tls=replace(server, cert=pick("serve_tls_cert", server.cert), key=pick("serve_tls_key", server.key),
                           client_ca=pick("serve_tls_client_ca", server.client_ca)),
        client_tls=replace(client, ca=pick("tls_ca", client.ca), cert=pick("tls_cert", client.cert),
                           key=pick("tls_key", client.key), on=getattr(args, "tls", False) or client.on),
    )


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamagate", description="Run GGUF models over gRPC.", epilog=_EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (llama-server's output too)")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    address = settings.address

    serve = sub.add_parser("serve", help="run the gRPC service")
    serve.add_argument("--listen", default=address, help=f"HOST:PORT, [IPv6]:PORT or unix:PATH to listen on"
                                                         f" (default {address})")
    serve.add_argument("--tls-cert", dest="serve_tls_cert", metavar="PEM",
                       help="serve TLS with this certificate chain (default: LLAMAGATE_TLS_CERT)")
    serve.add_argument("--tls-key", dest="serve_tls_key", metavar="PEM",
                       help="the certificate's private key (default: LLAMAGATE_TLS_KEY)")
    serve.add_argument("--tls-client-ca", dest="serve_tls_client_ca", metavar="PEM",
                       help="mutual TLS: clients need a certificate this CA signed (default: LLAMAGATE_TLS_CLIENT_CA)")
    serve.add_argument("--model", help="GGUF file or Hub REPO[:VARIANT] to load at start (default: the embedded"
                                       " SmolLM2)")
    serve.add_argument("--no-model", action="store_true", help="start with nothing loaded")
    serve.add_argument("--config", metavar="FILE", help="a TOML file declaring the models (see"
                                                      " docs/llamagate.example.toml)")
    serve.add_argument("--ctx", type=int, default=0, help="context length (0 = the model's native)")
    serve.add_argument("--parallel", type=int, default=1, help="parallel slots")
    serve.add_argument("--llama-cpp-dir", help="a llama.cpp install to take llama-server from")
    serve.add_argument("--max-message-mb", type=_megabytes, metavar="MIB",
                       help=f"largest request accepted, in MiB (default {settings.max_message_bytes // MIB})")
    serve.add_argument("--metrics", type=_metrics_address, metavar="HOST:PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics (default: LLAMAGATE_METRICS_ADDRESS;"
                            " none when unset)")
    serve.add_argument("--log-format", choices=LOG_FORMATS,
                       help="log lines as text, JSON objects, or auto: text on a terminal, JSON otherwise"
                            f" (default: LLAMAGATE_LOG_FORMAT, else {settings.observability.log_format})")
    serve.set_defaults(run=_serve)

    chat = sub.add_parser("chat", help="stream an answer from the running service")
    chat.add_argument("prompt")
    chat.add_argument("--model", default="", help="the model's id (default: the only one loaded)")
    chat.add_argument("--address", default=address)
    chat.add_argument("--system", help="system message")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--tool", action="append", default=[], metavar="NAME",
                      help="a tool the service runs for the model (python, terminal, web_search, fetch_url;"
                           " enabled with LLAMAGATE_TOOLS on the service); repeatable")
    chat.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a model still loading")
    chat.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the service")
    _token_option(chat)
    _tls_options(chat)
    chat.set_defaults(run=_client_command("chat"))

    say = sub.add_parser("say", help="speak text with a speech model of the running service, into a WAV file")
    say.add_argument("text")
    say.add_argument("--out", default="speech.wav", help="the WAV file to write (- for standard output)")
    say.add_argument("--model", default="", help="the model's id (default: the only one loaded)")
    say.add_argument("--voice", default="", help="a speaker the model knows (Orpheus: tara, leo, ...)")
    say.add_argument("--max-tokens", type=int)
    say.add_argument("--temperature", type=float)
    say.add_argument("--grammar", metavar="FILE", help="a GBNF grammar over the model's tokens (token references"
                                                        " such as <[128266]>) constraining what it may emit")
    say.add_argument("--address", default=address)
    say.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a model still loading")
    say.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the service")
    _token_option(say)
    _tls_options(say)
    say.set_defaults(run=_client_command("say"))

    load = sub.add_parser("load", help="load a model into a running service, with progress")
    load.set_defaults(run=_client_command("load"))
    load.add_argument("model", nargs="?", default="", help="GGUF file (on the service's machine) or Hub"
                                                             " REPO[:VARIANT]")
    load.add_argument("--revision", default="", help="Hub branch, tag or commit (default main)")
    load.add_argument("--as", dest="name", default="", metavar="ID",
                      help="the id to serve it as (default: the file's name); with no MODEL, a configured model")
    load.add_argument("--ctx", type=int, default=0, help="context length (0 = automatic, up to native)")
    load.add_argument("--parallel", type=int, default=1, help="parallel slots")
    _rpc_worker_option(load)
    load.add_argument("--address", default=address)
    load.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to wait for the service")
    _token_option(load)
    _tls_options(load)
    for name, help_text in (("status", "show every model, loaded or configured"), ("unload", "stop a model")):
        command = sub.add_parser(name, help=help_text)
        if name == "unload":
            command.add_argument("--model", default="", help="the model's id (default: the only one loaded)")
        command.add_argument("--address", default=address)
        command.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to wait for the service")
        _token_option(command)
        _tls_options(command)
        command.set_defaults(run=_client_command(name))

    engine = sub.add_parser("engine", help="the llama-server binary")
    engine_sub = engine.add_subparsers(required=True, metavar="ACTION")
    install = engine_sub.add_parser("install", help="build llama-server from source (cached)")
    install.add_argument("--backend", choices=("cpu", "cuda"), help="default: cuda when nvcc is found")
    install.add_argument("--force", action="store_true", help="rebuild even if cached")
    install.add_argument("--test-tools", action="store_true", help="also build test-llama-archs (for the test suite)")
    install.set_defaults(run=_engine_install)
    where = engine_sub.add_parser("path", help="print the llama-server that would be used")
    where.set_defaults(run=_engine_path)

    model = sub.add_parser("model", help="models")
    model_sub = model.add_subparsers(required=True, metavar="ACTION")
    default = model_sub.add_parser("default", help="fetch the embedded default model; print its path")
    default.set_defaults(run=_model_default)

    plan = sub.add_parser("plan", help="show how a model would be loaded: context, GPUs, memory")
    plan.add_argument("model", help="GGUF file, or Hub REPO[:VARIANT] (planned from its header: nothing is"
                                    " downloaded)")
    plan.add_argument("--revision", default="", help="Hub branch, tag or commit (default main)")
    plan.add_argument("--ctx", type=int, default=0, help="context length (0 = automatic, up to native)")
    plan.add_argument("--parallel", type=int, default=1, help="parallel slots")
    plan.add_argument("--cache-type", default="f16", help="KV cache type: f32 f16 bf16 q8_0 q5_1 q5_0 q4_1 q4_0 iq4_nl")
    plan.add_argument("--mmproj", default="", help="vision projector GGUF (its size counts)")
    plan.add_argument("--gpus", help="simulate GPUs as INDEX:FREE_MIB,... e.g. 0:24576,1:24576")
    _rpc_worker_option(plan)
    plan.set_defaults(run=_plan)

    worker = sub.add_parser("rpc-worker", help="run a llama.cpp RPC worker (ggml-rpc-server) that a client hanging "
                                               "up cannot kill (SIGPIPE ignored); never on an open network")
    worker.add_argument("--host", default="127.0.0.1", help="address to listen on (it has no authentication: "
                                                            "only a private network)")
    worker.add_argument("--port", type=int, default=50052)
    worker.add_argument("extra", nargs=argparse.REMAINDER, help="more ggml-rpc-server options after --, such as "
                                                                "-- --device CUDA0 --threads 8 --cache")
    worker.set_defaults(run=_rpc_worker)

    setup = sub.add_parser("setup", help="engine install + default model: everything serve needs")
    setup.add_argument("--test-tools", action="store_true", help="also build what the test suite needs")
    setup.set_defaults(run=_setup)
    return parser


def _token_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--token-file", dest="token", type=_token_file, metavar="FILE",
                         help="a file holding the token to send (default: LLAMAGATE_TOKEN)")


def _token_file(path: str) -> str:
    from llamagate.server.client import read_token_file

    try:
        return read_token_file(path)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _tls_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--tls", action="store_true", help="call over TLS (implied by the --tls-* options)")
    command.add_argument("--tls-ca", metavar="PEM", help="trust the service's certificate if this CA signed it"
                                                         " (default: LLAMAGATE_TLS_CA, else the system's CAs)")
    command.add_argument("--tls-cert", metavar="PEM", help="a client certificate, for a service with mutual TLS"
                                                           " (default: LLAMAGATE_TLS_CLIENT_CERT)")
    command.add_argument("--tls-key", metavar="PEM", help="its private key (default: LLAMAGATE_TLS_CLIENT_KEY)")


def _metrics_address(text: str):
    try:
        return metrics_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _megabytes(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(f"a whole number of MiB between 1 and 1024, not {text!r}")
    return int(text)


def _serve(args) -> int:
    return asyncio.run(_serve_async(args.settings, args))


async def _serve_async(settings: Settings, args) -> int:
    from llamagate.server.listen import ListenError, prepare

    try:
        prepare(settings)  # a taken or bad address, a wrong TLS file: said before anything starts
    except ListenError as error:
        print(f"llamagate: {error}", file=sys.stderr)
        return 2
    from llamagate.domain.errors import LlamagateError
    from llamagate.server.app import clean_stale_children

    await clean_stale_children(settings)
    try:
        await _run_service(settings, args)
    except ListenError as error:  # taken between the check and the bind
        print(f"llamagate: {error}", file=sys.stderr)
        return 2
    except LlamagateError as error:
        print(f"llamagate: {error}", file=sys.stderr)
        return 1
    finally:
        await clean_stale_children(settings)
    return 0


async def _run_service(settings: Settings, args) -> None:
    from llamagate.server.app import build_registry, create_server
    from llamagate.server.listen import where

    config = await asyncio.to_thread(_read_config, args.config) if args.config else None
    settings = replace(settings, model_roots=settings.model_roots.with_operator_files(_named_files(args, config)))
    _log_model_roots(settings)
    registry = build_registry(settings, config=config)
    loads = [load async for load in _start_loads(registry, settings, args, config)]
    try:
        app = await create_server(settings, registry)
    except BaseException:
        for _, events, _ in loads:
            await events.aclose()
        raise
    print(f"llamagate listening on {where(settings, app.port)}", flush=True)
    if settings.observability.metrics is not None:
        print(f"metrics at http://{settings.observability.metrics.with_port(app.metrics_port)}/metrics", flush=True)
    stop, cut = asyncio.Event(), asyncio.Event()  # the first signal drains, a second cuts what is left

    def on_signal() -> None:
        if stop.is_set():
            logging.getLogger("llamagate.serve").info("second signal: ending the requests in flight now")
        (cut if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, on_signal)
    tasks = [asyncio.create_task(_follow_load(first, events)) for _, events, first in loads]
    try:
        waiting = {asyncio.create_task(stop.wait()), *tasks}
        while tasks and not stop.is_set():
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done & set(tasks):  # a failed start-up load ends serve with its error
                ready = task.result()
                print(f"model {ready.id} ready: context {ready.context_length}, pid {ready.pid}", flush=True)
                tasks.remove(task)
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        grace = settings.network.shutdown_grace_s
        logging.getLogger("llamagate.serve").info("stopping: requests in flight have %g s to finish", grace)
        await app.stop(grace, cut)


def _read_config(path: str):
    from llamagate.adapters.config_file import read_service_config

    return read_service_config(path)


def _named_files(args, config) -> list[str]:
    """The model files serve is started with (the default model is in a model root already)."""
    source = model_source(args.model) if args.model else None
    files = [source] if isinstance(source, str) else []
    for spec in config.models if config is not None else ():
        files += [path for path in (spec.source, spec.options.mmproj_path) if isinstance(path, str) and path]
    return files


def _log_model_roots(settings: Settings) -> None:
    """The directories callers may load model files from: a refusal names only the setting."""
    from llamagate.adapters.model_files import model_roots

    roots = model_roots(settings.model_roots, settings.cache_dir).roots
    logging.getLogger("llamagate.serve").info("model files may be loaded from: %s", ", ".join(roots))


async def _start_loads(registry, settings: Settings, args, config):
    """The loads serve starts with, each past its checks (RESOLVING): so the
    service listens once its models are LOADING, and an early client waits
    for them instead of seeing "no model loaded"."""
    from llamagate.domain.load_options import LoadOptions
    from llamagate.domain.model_info import LoadPhase
    from llamagate.server.app import default_model

    wanted: list[tuple[str, object, LoadOptions | None]] = []
    if config is not None:
        wanted += [(spec.id, None, None) for spec in config.models if spec.load_at_start]
    if args.model or (config is None and not args.no_model):
        source = model_source(args.model) if args.model else str(await default_model(settings))
        wanted.append(("", source, LoadOptions(context_length=args.ctx, parallel=args.parallel)))
    for name, source, options in wanted:
        events = registry.load(name, source, options)
        first = await anext(events)
        while first.phase is LoadPhase.RESOLVING:
            first = await anext(events)
        yield name, events, first


async def _follow_load(event, events):
    """Drive the start-up load (no RPC caller), logging its phases."""
    from llamagate.domain.model_info import LoadPhase

    log = logging.getLogger("llamagate.serve")
    async with contextlib.aclosing(events):
        while True:
            log.info("load %s: %s", event.phase.value, event.message)
            if event.phase is LoadPhase.READY and event.model is not None:
                return event.model
            event = await anext(events)


def _rpc_worker_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--rpc-worker", action="append", default=[], metavar="HOST:PORT",
                         help="an RPC worker (llamagate rpc-worker) to hold layers; one the service's"
                              " LLAMAGATE_RPC_WORKERS lists; repeatable")


def _client_command(name: str):
    def run(args) -> int:
        from llamagate.server import client

        try:
            return getattr(client, name)(args)
        except client.Misconfigured as error:  # a bad address or TLS file: exit 2, as serve does
            print(f"llamagate: {error}", file=sys.stderr)
            return 2

    return run


def _engine_install(args) -> int:
    from llamagate.adapters.engine_install import install_engine

    install_engine(args.settings.cache_dir, backend=args.backend, force=args.force, test_tools=args.test_tools)
    return 0


def _engine_path(args) -> int:
    from llamagate.adapters.engine_discovery import find_llama_server
    from llamagate.domain.errors import EngineNotFound

    try:
        print(find_llama_server(args.settings.env, args.settings.cache_dir, args.settings.llama_cpp_dir or None))
    except EngineNotFound as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def _rpc_worker(args) -> int:
    """Become ggml-rpc-server (exec), with SIGPIPE ignored: it writes replies
    with plain send(), so a client gone mid-reply (a probe that gave up, a
    llama-server that died while another worker computed) would kill it;
    ignored, the send fails with EPIPE and the worker serves the next client."""
    from llamagate.adapters.engine_discovery import child_environment, find_rpc_server
    from llamagate.domain.errors import EngineNotFound

    try:
        binary = find_rpc_server(args.settings.env, args.settings.cache_dir, args.settings.llama_cpp_dir or None)
    except EngineNotFound as error:
        print(error, file=sys.stderr)
        return 1
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    argv = [str(binary), "--host", args.host, "--port", str(args.port), *extra]
    sys.stdout.flush()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # an ignored signal stays ignored across exec
    os.execve(binary, argv, child_environment(binary, args.settings.env))
    return 0  # unreachable: exec replaced this process


def _model_default(args) -> int:
    from llamagate.adapters.default_model import ensure_default_model

    print(ensure_default_model(args.settings.cache_dir, say=lambda line: print(line, file=sys.stderr)))
    return 0


def _plan(args) -> int:
    from llamagate.domain.errors import LlamagateError
    from llamagate.domain.load_options import KvCacheType, LoadOptions
    from llamagate.server.plan_table import render_plan

    try:
        options = LoadOptions(context_length=args.ctx, parallel=args.parallel,
                              cache_type=KvCacheType(args.cache_type), mmproj_path=args.mmproj,
                              rpc_workers=tuple(args.rpc_worker))
        gpus = parse_gpus(args.gpus) if args.gpus else None
        source = model_source(args.model, revision=args.revision)
        load_plan, hub = asyncio.run(_plan_once(args.settings, source, options, gpus))
    except (LlamagateError, ValueError) as error:
        print(f"llamagate: {error}", file=sys.stderr)
        return 1
    print(render_plan(load_plan, hub))
    return 0


async def _plan_once(settings: Settings, source, options, gpus):
    from llamagate.server.app import build_registry

    files = [path for path in (source, options.mmproj_path) if isinstance(path, str) and path]
    registry = build_registry(replace(settings, model_roots=settings.model_roots.with_operator_files(files)))
    try:
        return await registry.plan(source, options, gpus)
    finally:
        await registry.close()


def model_source(text: str, *, revision: str = ""):
    """A file when one is there (or the text names a .gguf), else a Hub ``REPO[:VARIANT]``."""
    from llamagate.domain.hub import parse_reference

    if Path(text).expanduser().exists() or text.lower().endswith(".gguf"):
        return str(Path(text).expanduser())
    return replace(parse_reference(text), revision=revision)


def parse_gpus(text: str) -> list:
    """``0:24576,1:24576`` -> simulated GPUs with that many MiB free."""
    from llamagate.domain.gpus import MIB, GpuInfo

    gpus = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        index, _, free = item.partition(":")
        if not (index.isdigit() and free.isdigit()):
            raise ValueError(f"--gpus: {item!r} is not INDEX:FREE_MIB")
        gpus.append(GpuInfo(int(index), int(free) * MIB))
    return gpus


def _setup(args) -> int:
    from llamagate.adapters.default_model import ensure_default_model
    from llamagate.adapters.engine_install import install_engine

    install_engine(args.settings.cache_dir, test_tools=args.test_tools)
    ensure_default_model(args.settings.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
