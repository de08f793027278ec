"""The service's settings: read once from the environment, then passed down.

Nothing below the composition root reads ``os.environ``: adapters get the
values (and the environment children inherit) from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_MB = 64  # an image of a few MiB must fit; gRPC's own default is 4 MiB
MIB = 1 << 20


@dataclass(frozen=True)
class Settings:
    address: str = DEFAULT_ADDRESS  # LLAMAGATE_ADDRESS: where serve listens and clients call
    cache_dir: Path = field(default_factory=lambda: platformdirs.user_cache_path("llamagate"))  # LLAMAGATE_CACHE_DIR
    llama_cpp_dir: str = ""  # LLAMA_CPP_DIR: a llama.cpp install to take llama-server from
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_MB * MIB  # LLAMAGATE_MAX_MESSAGE_MB: largest request accepted
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
            env=dict(env),
        )


def _megabytes(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 1024:
        raise ValueError(f"{name} must be a whole number of MiB between 1 and 1024, got {raw!r}")
    return int(raw)
