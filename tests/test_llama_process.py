"""The llama-server child itself: pinning, early exit, stopping (SPEC §8-§11)."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from llamagate.adapters.llama_process import LlamaServerLauncher
from llamagate.domain.errors import EngineFailed
from llamagate.domain.launch import LaunchSpec

pytestmark = pytest.mark.engine


def child_env(pid: int) -> dict[str, str]:
    return psutil.Process(pid).environ()


async def _start(spec_kwargs, **launcher_kwargs):
    launcher = LlamaServerLauncher(**launcher_kwargs)
    return await launcher.launch(LaunchSpec(port=launcher.free_port(), **spec_kwargs))


def test_planned_gpus_are_pinned_in_the_childs_environment(smollm2_path):
    async def run():
        engine = await _start(dict(model_path=str(smollm2_path), context_length=512, gpus=(2, 5)))
        try:
            return child_env(engine.pid)
        finally:
            await engine.stop()

    env = asyncio.run(run())
    assert env["CUDA_VISIBLE_DEVICES"] == "2,5" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_an_unpinned_child_keeps_the_services_view_of_the_gpus(smollm2_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")

    async def run():
        engine = await _start(dict(model_path=str(smollm2_path), context_length=512))
        try:
            return child_env(engine.pid)
        finally:
            await engine.stop()

    assert asyncio.run(run())["CUDA_VISIBLE_DEVICES"] == "1"


def test_early_exit_reports_the_code_and_the_last_lines(tmp_path, llama_cpp_tree):
    async def run():
        engine = await _start(dict(model_path=str(llama_cpp_tree / "models" / "ggml-vocab-llama-spm.gguf"),
                                   context_length=512))
        with pytest.raises(EngineFailed) as caught:
            async for _ in engine.watch_until_ready():
                pass
        await engine.stop()
        return engine.pid, str(caught.value)

    pid, message = asyncio.run(run())
    assert "exited with code" in message and "memory suffices" in message
    assert len(message.splitlines()) > 3  # the child's own last lines follow
    assert not psutil.pid_exists(pid)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    stubborn = tmp_path / "llama-server"
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\nwhile true; do sleep 0.1; done\n")
    stubborn.chmod(0o755)

    async def run():
        engine = await _start(dict(model_path="/unused.gguf", context_length=512),
                              find_binary=lambda: stubborn, stop_grace=0.5)
        await asyncio.sleep(0.3)  # let the shell install its trap
        group = [p.pid for p in psutil.Process(engine.pid).children(recursive=True)] + [engine.pid]
        await engine.stop()
        return group

    group = asyncio.run(run())
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in group)


def test_a_binary_that_cannot_run_is_engine_failed_naming_it(tmp_path):
    broken = tmp_path / "llama-server"
    broken.write_bytes(b"\x7fELF not really")
    broken.chmod(0o755)

    async def run():
        await _start(dict(model_path="/m.gguf", context_length=512), find_binary=lambda: broken)

    with pytest.raises(EngineFailed, match=str(broken)):
        asyncio.run(run())
