"""Shared fixtures: the real llama.cpp tree and the real default model.

Both are set up by ``./dev`` (``llamagate engine install`` and
``llamagate model default``); a test that needs them fails loudly when they
are missing instead of skipping, so a broken set-up cannot pass CI.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import settings

from llamagate.adapters import paths
from llamagate.domain.ports import MemoryProbe
from llamagate.server.settings import Settings

# Tests never assert on time: a slow CI machine must not fail a property.
settings.register_profile("llamagate", deadline=None)
settings.load_profile("llamagate")


def _require(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing; run `{how}` (./dev does this)")
    return path


@pytest.fixture(scope="session")
def service_settings() -> Settings:
    """The settings a `llamagate serve` started here would read."""
    return Settings.from_env(os.environ)


@pytest.fixture(scope="session")
def cache_dir(service_settings) -> Path:
    return service_settings.cache_dir


@pytest.fixture(scope="session")
def llama_cpp_tree(cache_dir) -> Path:
    """The llama.cpp source tree of the pinned sdist (models/, templates/)."""
    return _require(paths.engine_source_dir(cache_dir), "llamagate engine install")


@pytest.fixture(scope="session")
def smollm2_path(cache_dir) -> Path:
    return _require(paths.default_model_path(cache_dir), "llamagate model default")


class RunningService:
    """The real gRPC server on a free port, its event loop in a thread.

    Tests talk to it through a real channel, exactly like a client would.
    """

    def __init__(self, settings: Settings | None = None, memory: MemoryProbe | None = None) -> None:
        import asyncio
        import threading

        settings = replace(settings or Settings.from_env(os.environ), address="127.0.0.1:0")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="llamagate-test-server", daemon=True)
        self._thread.start()
        self.app = self.call(self._start(settings, memory))
        self.address = f"127.0.0.1:{self.app.port}"

    @staticmethod
    async def _start(settings: Settings, memory: MemoryProbe | None):
        from llamagate.server.app import build_slot, create_server

        return await create_server(settings, build_slot(settings, memory))  # the slot's tasks live on this loop

    def call(self, coroutine):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=120)

    def close(self) -> None:
        self.call(self.app.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def service(llama_cpp_tree, smollm2_path):
    running = RunningService()
    yield running
    running.close()


@pytest.fixture(scope="module")
def stub(service):
    import grpc

    from llamagate.v1 import llamagate_pb2_grpc

    with grpc.insecure_channel(service.address) as channel:
        yield llamagate_pb2_grpc.LlamaGateServiceStub(channel)


@pytest.fixture(scope="session")
def tiny_projector(tmp_path_factory) -> Path:
    """A tiny vision projector with random weights for SmolLM2 (tests/projector.py)."""
    from projector import write_projector

    return write_projector(tmp_path_factory.mktemp("projector") / "tiny-mmproj.gguf")
