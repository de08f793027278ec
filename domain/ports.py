"""How the domain talks to the world. Adapters satisfy these by shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from llamagate.domain.chat import ChatChunk
from llamagate.domain.gpus import GpuInfo
from llamagate.domain.launch import LaunchSpec
from llamagate.domain.model import ModelFacts


class ModelInspector(Protocol):
    def inspect(self, path: str) -> ModelFacts:
        """Read the GGUF header. Raises ModelNotFound or InvalidModel."""


class MemoryProbe(Protocol):
    def gpus(self) -> list[GpuInfo]:
        """The GPUs this service may use, with their free memory now."""

    def host_free_bytes(self) -> int:
        """System memory available now (the pool when there is no GPU)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a child serves HTTP, and the key it demands (empty: none)."""

    base_url: str
    api_key: str = ""


class EngineProcess(Protocol):
    pid: int
    endpoint: Endpoint

    def watch_until_ready(self) -> AsyncIterator[int]:
        """Yield resident bytes while loading; return once healthy.

        Raises EngineFailed (with the child's last output) if it exits first.
        """

    async def stop(self) -> None:
        """SIGTERM, a grace period, then SIGKILL; returns once the child is gone."""

    async def wait_exit(self) -> str:
        """Return once the child has exited, for whatever reason, saying how (code, last output)."""


class EngineLauncher(Protocol):
    def free_port(self) -> int: ...

    async def launch(self, spec: LaunchSpec, *, chat_template: str = "") -> EngineProcess:
        """Spawn llama-server; ``chat_template`` overrides the model's template."""


class ChatEngine(Protocol):
    def stream_chat(self, endpoint: Endpoint, body: dict[str, object]) -> AsyncIterator[ChatChunk]:
        """Stream a chat completion. Raises EngineFailed or EngineRejected."""

    async def props(self, endpoint: Endpoint) -> dict[str, object]:
        """llama-server's ``/props`` (its own view of the template and modalities); {} if unavailable."""
