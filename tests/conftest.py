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


@pytest.fixture(scope="session", autouse=True)
def _model_roots_env(tmp_path_factory):
    """The tests' model roots, as an operator would set them (LLAMAGATE_MODEL_ROOTS):
    the tests' temporary files (synthetic GGUFs, test-llama-archs' output, Hub
    caches), the llama.cpp tree's test GGUFs and the default model's
    directory; the service adds its own caches. Set for the session, before
    any service or ``llamagate serve`` child reads the environment."""
    cache = Settings.from_env({k: v for k, v in os.environ.items() if k != "LLAMAGATE_MODEL_ROOTS"}).cache_dir
    # the model cache too: a test that moves LLAMAGATE_CACHE_DIR still loads the default model from here
    roots = [str(tmp_path_factory.getbasetemp()), str(paths.engine_source_dir(cache)), str(paths.models_dir(cache))]
    before = os.environ.get("LLAMAGATE_MODEL_ROOTS")
    os.environ["LLAMAGATE_MODEL_ROOTS"] = os.pathsep.join(roots)
    yield roots
    if before is None:
        os.environ.pop("LLAMAGATE_MODEL_ROOTS", None)
    else:
        os.environ["LLAMAGATE_MODEL_ROOTS"] = before


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

    def __init__(self, settings: Settings | None = None, memory: MemoryProbe | None = None, disk=None,
                 config=None) -> None:
        import asyncio
        import threading

        settings = replace(settings or Settings.from_env(os.environ), address="127.0.0.1:0")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="llamagate-test-server", daemon=True)
        self._thread.start()
        self.app = self.call(self._start(settings, memory, disk, config))
        self.address = f"127.0.0.1:{self.app.port}"

    @staticmethod
    async def _start(settings: Settings, memory: MemoryProbe | None, disk, config):
        from llamagate.server.app import build_registry, create_server

        # the slots' tasks live on this loop
        return await create_server(settings, build_registry(settings, memory, disk, config))

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


# -- A local Hugging Face Hub (tests/hub_server.py): no internet here -------------


@pytest.fixture(scope="session")
def hub_repos(smollm2_path, tmp_path_factory):
    """Every test repo (hub_server's *_REPO names), made from the real SmolLM2 (~2.5 s, once)."""
    from hub_server import smollm2_hub_repos
    from projector import write_projector

    def projector(path: Path, seed: int) -> Path:
        return write_projector(path, seed=seed)

    return smollm2_hub_repos(smollm2_path, tmp_path_factory.mktemp("hub"), projector)


@pytest.fixture(scope="session")
def hub_session(hub_repos):
    from hub_server import OTHER_TOKEN, HubServer

    server = HubServer(hub_repos, tokens={OTHER_TOKEN}).start()
    yield server
    server.close()


@pytest.fixture
def hub(hub_session):
    """The session's Hub, its request log empty, no rate, hold or cut."""
    hub_session.reset()
    yield hub_session
    hub_session.reset()


@pytest.fixture
def hf_cache(hub, tmp_path, monkeypatch) -> Path:
    """huggingface_hub pointed at ``hub`` with an empty cache and no token of its own.

    huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE
    once, at import: the environment is set for child processes and the module
    constants for this one. Returns the hub cache directory (HF_HUB_CACHE).
    """
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.utils._cache_manager as hf_cache_manager

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for name, value in {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": str(cache)}.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "ENDPOINT": hub.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        "HF_HUB_OFFLINE": False,
    }.items():
        monkeypatch.setattr(hf_constants, name, value)
    monkeypatch.setattr(hf_cache_manager, "HF_HUB_CACHE", str(cache))  # scan_cache_dir's default
    return cache


@pytest.fixture
def hf_offline(hf_cache, monkeypatch):
    """Call it to switch huggingface_hub to offline mode (HF_HUB_OFFLINE=1) for the rest of the test."""
    import huggingface_hub.constants as hf_constants

    def go_offline() -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    return go_offline
