"""The service's settings: read once from the environment, then passed down.

Nothing below the composition root reads ``os.environ``: adapters get the
values (and the environment children inherit) from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs
import psutil

from llamagate.adapters.model_files import ModelRootSettings
from llamagate.application.rpc_workers import RpcWorkerSettings
from llamagate.application.slot import SlotSettings
from llamagate.application.watchdog import Watchdog
from llamagate.domain.audio_codecs import SHAPES, AudioCodec
from llamagate.domain.errors import InvalidArgument
from llamagate.domain.model_config import parse_size
from llamagate.domain.restart_policy import RestartPolicy
from llamagate.domain.speech import DecoderSource, decoder_source
from llamagate.server.auth import AuthSettings
from llamagate.server.network import NetworkSettings
from llamagate.server.observability import ObservabilitySettings
from llamagate.server.replica import ReplicaSettings
from llamagate.server.stream_limits import StreamLimitSettings

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_MB = 64  # an image of a few MiB must fit; gRPC's own default is 4 MiB
MIB = 1 << 20


@dataclass(frozen=True)
class Settings:
    address: str = DEFAULT_ADDRESS  # LLAMAGATE_ADDRESS: where serve listens and clients call
    cache_dir: Path = field(default_factory=lambda: platformdirs.user_cache_path("llamagate"))  # LLAMAGATE_CACHE_DIR
    llama_cpp_dir: str = ""  # LLAMA_CPP_DIR: a llama.cpp install to take llama-server from
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_MB * MIB  # LLAMAGATE_MAX_MESSAGE_MB: largest request accepted
    host_memory_bytes: int = 0  # LLAMAGATE_HOST_MEMORY (e.g. 12GiB): what the models share without GPUs; 0 = all
    # queue, restart policy, watchdog, cancel bound: LLAMAGATE_QUEUE_SIZE, LLAMAGATE_RESTART,
    # LLAMAGATE_RESTART_MAX, LLAMAGATE_RESTART_BACKOFF_MS, LLAMAGATE_WATCHDOG_MS, LLAMAGATE_CANCEL_WITHIN_MS
    slot: SlotSettings = field(default_factory=SlotSettings)
    # the tools Generate may run itself (server_tools): LLAMAGATE_TOOLS, LLAMAGATE_SEARXNG_URL, LLAMAGATE_FETCH_PRIVATE
    tools: ToolSettings = field(default_factory=lambda: ToolSettings())
    auth: AuthSettings = field(default_factory=AuthSettings)  # LLAMAGATE_AUTH_TOKENS(_FILE), LLAMAGATE_AUTH_EXEMPT
    network: NetworkSettings = field(default_factory=NetworkSettings)  # LLAMAGATE_TLS_*, LLAMAGATE_SHUTDOWN_GRACE_S
    model_roots: ModelRootSettings = field(default_factory=ModelRootSettings)  # LLAMAGATE_MODEL_ROOTS
    # the metrics endpoint and the log lines: LLAMAGATE_METRICS_ADDRESS, LLAMAGATE_LOG_FORMAT
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    # LLAMAGATE_MAX_STREAMS(_PER_CLIENT), LLAMAGATE_MAX_PROMPT_BYTES, LLAMAGATE_KEEPALIVE_S
    limits: StreamLimitSettings = field(default_factory=StreamLimitSettings)
    replica: ReplicaSettings = field(default_factory=ReplicaSettings)  # LLAMAGATE_REPLICA_ID: x-llamagate-replica
    rpc_workers: RpcWorkerSettings = field(default_factory=RpcWorkerSettings)  # LLAMAGATE_RPC_WORKERS: the allowlist
    # what children inherit, the GPU visibility masks, and LLAMA_SERVER_PATH / PATH for engine discovery
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Raises ValueError naming the variable when one is malformed."""
        cache = env.get("LLAMAGATE_CACHE_DIR")
        return cls(
            address=env.get("LLAMAGATE_ADDRESS") or DEFAULT_ADDRESS,
            cache_dir=Path(cache).expanduser() if cache else platformdirs.user_cache_path("llamagate"),
            llama_cpp_dir=env.get("LLAMA_CPP_DIR", ""),
            max_message_bytes=_megabytes(env, "LLAMAGATE_MAX_MESSAGE_MB", DEFAULT_MAX_MESSAGE_MB) * MIB,
            host_memory_bytes=_size(env, "LLAMAGATE_HOST_MEMORY"),
            slot=slot_settings(env),
            tools=tool_settings(env),
            auth=AuthSettings.from_env(env),
            network=NetworkSettings.from_env(env),
            model_roots=ModelRootSettings.from_env(env),
            observability=ObservabilitySettings.from_env(env),
            limits=limit_settings(env),
            replica=ReplicaSettings.from_env(env),
            rpc_workers=RpcWorkerSettings.from_env(env),
            env=dict(env),
        )


@dataclass(frozen=True)
class ToolSettings:
    enabled: frozenset[str] = frozenset({"fetch_url"})  # python and terminal only when named
    searxng_url: str = ""  # web_search's backend (a SearXNG instance)
    allow_private_fetch: bool = False  # fetch_url may reach loopback and private addresses


SERVER_TOOLS = ("python", "terminal", "web_search", "fetch_url")


def tool_settings(env: Mapping[str, str]) -> ToolSettings:
    """Raises ValueError naming the variable when one is malformed."""
    searxng = env.get("LLAMAGATE_SEARXNG_URL", "").strip()
    raw = env.get("LLAMAGATE_TOOLS")
    if raw is None:
        enabled = {"fetch_url", "web_search"} if searxng else {"fetch_url"}
    else:
        enabled = {name.strip() for name in raw.split(",") if name.strip()}
    unknown = enabled - set(SERVER_TOOLS)
    if unknown:
        raise ValueError(f"LLAMAGATE_TOOLS names unknown tools {sorted(unknown)}; the tools are {', '.join(SERVER_TOOLS)}")
    if "web_search" in enabled and not searxng:
        raise ValueError("LLAMAGATE_TOOLS enables web_search, which needs LLAMAGATE_SEARXNG_URL (a SearXNG instance)")
    private = env.get("LLAMAGATE_FETCH_PRIVATE", "").strip().lower()
    if private not in ("", "0", "1", "false", "true"):
        raise ValueError(f"LLAMAGATE_FETCH_PRIVATE must be 0 or 1, got {private!r}")
    return ToolSettings(frozenset(enabled), searxng, private in ("1", "true"))


def slot_settings(env: Mapping[str, str]) -> SlotSettings:
    """Raises ValueError naming the variable when one is malformed."""
    default = SlotSettings()
    mode = env.get("LLAMAGATE_RESTART", "").strip() or "on-failure"
    if mode not in ("on-failure", "never"):
        raise ValueError(f"LLAMAGATE_RESTART must be on-failure or never, got {mode!r}")
    backoff = _whole(env, "LLAMAGATE_RESTART_BACKOFF_MS", int(default.restart.backoff_s * 1000), 0, 600_000) / 1000
    try:
        restart = RestartPolicy(
            enabled=mode == "on-failure",
            max_restarts=_whole(env, "LLAMAGATE_RESTART_MAX", default.restart.max_restarts, 0, 1000),
            backoff_s=backoff,
            max_backoff_s=max(backoff, default.restart.max_backoff_s),
        )
    except InvalidArgument as error:
        raise ValueError(str(error)) from error
    silent_s = _whole(env, "LLAMAGATE_WATCHDOG_MS", int(default.watchdog.silent_after_s * 1000), 100, 3_600_000) / 1000
    return SlotSettings(
        queue_size=_whole(env, "LLAMAGATE_QUEUE_SIZE", default.queue_size, 0, 100_000),
        restart=restart,
        watchdog=Watchdog(interval_s=min(default.watchdog.interval_s, silent_s / 3), silent_after_s=silent_s),
        cancel_within_s=_whole(env, "LLAMAGATE_CANCEL_WITHIN_MS", int(default.cancel_within_s * 1000), 0,
                               600_000) / 1000,
        host_threads=_compute_threads(),
        host_cache_mib=_whole(env, "LLAMAGATE_CACHE_RAM_MIB", default.host_cache_mib, 0, 1 << 20),
        decoders=_decoders(env, default.decoders),
    )


def _decoders(env: Mapping[str, str], defaults: Mapping[AudioCodec, DecoderSource]) -> dict[AudioCodec, DecoderSource]:
    """LLAMAGATE_SNAC_DECODER, LLAMAGATE_DAC_DECODER: an ONNX file, or OWNER/REPO:FILE in the Hub cache."""
    sources = dict(defaults)
    for codec in SHAPES:
        name = f"LLAMAGATE_{codec.name}_DECODER"
        if env.get(name, "").strip():
            sources[codec] = decoder_source(env[name].strip())
    return sources


def limit_settings(env: Mapping[str, str]) -> StreamLimitSettings:
    """Raises ValueError naming the variable when one is malformed."""
    default = StreamLimitSettings()
    return StreamLimitSettings(
        total=_whole(env, "LLAMAGATE_MAX_STREAMS", default.total, 0, 1_000_000),
        per_client=_whole(env, "LLAMAGATE_MAX_STREAMS_PER_CLIENT", default.per_client, 0, 1_000_000),
        prompt_bytes=_whole(env, "LLAMAGATE_MAX_PROMPT_BYTES", default.prompt_bytes, 0, 1 << 31),
        keepalive_s=_whole(env, "LLAMAGATE_KEEPALIVE_S", default.keepalive_s, 1, 86_400),
    )


def _compute_threads() -> int:
    """The threads llama-server computes with by default: physical cores, within our affinity."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(usable, psutil.cpu_count(logical=False) or usable))


def _whole(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"{name} must be a whole number between {low} and {high}, got {raw!r}")
    return int(raw)


def _size(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return 0
    try:
        return parse_size(int(raw) if raw.isdigit() else raw)
    except InvalidArgument as error:
        raise ValueError(f"{name}: {error.description}") from error


def _megabytes(env: Mapping[str, str], name: str, default: int) -> int:
    return _whole(env, name, default, 1, 1024)
