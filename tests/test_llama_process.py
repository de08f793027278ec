"""The real llama-server child (SPEC §8–§11): preflight, launch, health,
failures, stop, and nothing left behind (defects 2, 3, 10)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from pathlib import Path

import psutil
import pytest
from processes import gone

from llamagate.adapters.child_registry import read_records
from llamagate.adapters.engine_discovery import find_llama_server
from llamagate.adapters.llama_process import LlamaServerLauncher, LlamaServerProcess
from llamagate.domain.capabilities import ServerCapabilities
from llamagate.domain.chat import (
    CallMessage,
    ChatCall,
    FinishReason,
    ResolvedSampling,
    Role,
    TextPart,
)
from llamagate.domain.errors import ContextExceeded, EngineFailed, EngineNotFound
from llamagate.domain.launch import LaunchSpec

pytestmark = pytest.mark.engine

SAMPLING = ResolvedSampling(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
                            presence_penalty=0.0, seed=1)  # fmt: skip
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"


@pytest.fixture
def registry(tmp_path) -> Path:
    return tmp_path / "run" / "children"


@pytest.fixture
def real_binary(cache_dir) -> Path:
    return find_llama_server({"PATH": ""}, cache_dir)


@pytest.fixture
def launcher(real_binary, registry) -> LlamaServerLauncher:
    return LlamaServerLauncher(lambda: real_binary, registry_dir=registry, env=os.environ)


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def template_file_of(pid: int) -> Path:
    cmdline = psutil.Process(pid).cmdline()
    return Path(cmdline[cmdline.index("--chat-template-file") + 1])


async def ready(engine: LlamaServerProcess) -> list[int]:
    return [resident async for resident in engine.wait_ready()]


def smol(smollm2_path: Path, **kwargs) -> LaunchSpec:
    return LaunchSpec(model_path=str(smollm2_path), context_length=kwargs.pop("context_length", 512), **kwargs)


# --- a real load, end to end ---------------------------------------------------


def test_a_launched_child_gets_ready_answers_and_stops_leaving_nothing(launcher, smollm2_path, registry):
    async def scenario():
        engine = await launcher.launch(smol(smollm2_path, chat_template=TEMPLATE))
        template = template_file_of(engine.pid)
        recorded = read_records(registry)
        await ready(engine)
        call = ChatCall((CallMessage(Role.USER, (TextPart("Say hi"),)),), SAMPLING, max_tokens=8)
        chunks = [chunk async for chunk in engine.chat.stream_chat(call)]
        caps = await engine.chat.server_capabilities()
        await engine.stop()
        return engine, template, recorded, chunks, caps, await engine.wait_exit()

    engine, template, recorded, chunks, caps, ended = asyncio.run(scenario())
    assert "".join(c.content for c in chunks)
    assert [c.finish_reason for c in chunks if c.finish_reason] in ([FinishReason.STOP], [FinishReason.LENGTH])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert caps == ServerCapabilities(tools=False, preserve_thinking=False, vision=False)
    assert [r.pid for _, r in recorded if r] == [engine.pid]
    assert gone(engine.pid) and not template.exists() and read_records(registry) == []
    assert ended.how in ("exit code 0", "killed by SIGTERM")


def test_loading_progress_is_the_childs_resident_memory(launcher, smollm2_path):
    async def scenario():
        engine = await launcher.launch(smol(smollm2_path))
        try:
            return await ready(engine)
        finally:
            await engine.stop()

    assert all(isinstance(n, int) and n >= 0 for n in asyncio.run(scenario()))


def test_planned_gpus_hold_every_layer_and_the_build_accepts_it(launcher, smollm2_path):
    # "-ngl all --fit off" on a CPU build: the flags are accepted and the model loads.
    async def scenario():
        engine = await launcher.launch(smol(smollm2_path, offload_all=True, gpus=(0,)))
        try:
            await ready(engine)
        finally:
            await engine.stop()

    asyncio.run(scenario())


def test_a_prompt_larger_than_a_slot_is_context_exceeded_with_llama_servers_numbers(launcher, smollm2_path):
    async def scenario():
        engine = await launcher.launch(smol(smollm2_path, context_length=256))
        try:
            await ready(engine)
            call = ChatCall((CallMessage(Role.USER, (TextPart("word " * 400),)),), SAMPLING, max_tokens=8)
            with pytest.raises(ContextExceeded) as caught:
                [_ async for _ in engine.chat.stream_chat(call)]
            return caught.value
        finally:
            await engine.stop()

    error = asyncio.run(scenario())
    assert error.context_length == 256 and error.prompt_tokens > 256
    assert f"needs {error.prompt_tokens} tokens; a slot of the loaded model holds 256" in str(error)


# --- the child's environment -------------------------------------------------------


def child_env(pid: int) -> dict[str, str]:
    return psutil.Process(pid).environ()


def _environment_of(launcher: LlamaServerLauncher, spec: LaunchSpec) -> tuple[dict[str, str], list[str]]:
    async def scenario():
        engine = await launcher.launch(spec)
        try:
            return child_env(engine.pid), psutil.Process(engine.pid).cmdline()
        finally:
            await engine.stop()

    return asyncio.run(scenario())


def test_planned_gpus_are_pinned_in_the_childs_environment(launcher, smollm2_path):
    env, _ = _environment_of(launcher, smol(smollm2_path, gpus=(2, 5)))
    assert env["CUDA_VISIBLE_DEVICES"] == "2,5" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_an_unpinned_child_keeps_the_services_view_of_the_gpus(real_binary, registry, smollm2_path):
    launcher = LlamaServerLauncher(lambda: real_binary, registry_dir=registry,
                                   env=dict(os.environ, CUDA_VISIBLE_DEVICES="1"))  # fmt: skip
    env, _ = _environment_of(launcher, smol(smollm2_path))
    assert env["CUDA_VISIBLE_DEVICES"] == "1"


def test_the_api_key_is_in_the_childs_environment_never_its_command_line(launcher, smollm2_path):
    env, cmdline = _environment_of(launcher, smol(smollm2_path))
    key = env["LLAMA_API_KEY"]
    assert len(key) >= 24 and not any(key in arg for arg in cmdline) and "--api-key" not in cmdline
    assert str(Path(cmdline[0]).parent) == env["LD_LIBRARY_PATH"].split(os.pathsep)[0]


# --- failing to start --------------------------------------------------------------


def test_early_exit_reports_the_code_and_the_last_lines(launcher, llama_cpp_tree):
    vocab_only = llama_cpp_tree / "models" / "ggml-vocab-llama-spm.gguf"  # a GGUF with no weights

    async def scenario():
        engine = await launcher.launch(LaunchSpec(str(vocab_only), 512, chat_template=TEMPLATE))
        template = template_file_of(engine.pid)
        with pytest.raises(EngineFailed) as caught:
            await ready(engine)
        return engine.pid, template, str(caught.value)

    pid, template, message = asyncio.run(scenario())
    assert "exited with code 1 before it was ready" in message and "memory suffices" in message
    assert len(message.splitlines()) > 3  # the child's own last lines follow
    assert gone(pid) and not template.exists()


def test_an_ollama_model_that_fails_gets_the_ollama_hint(launcher, llama_cpp_tree, tmp_path):
    store = tmp_path / ".ollama" / "models" / "blobs"
    store.mkdir(parents=True)
    blob = store / "sha256-0123"
    shutil.copy(llama_cpp_tree / "models" / "ggml-vocab-llama-spm.gguf", blob)

    async def scenario():
        engine = await launcher.launch(LaunchSpec(str(blob), 512))
        with pytest.raises(EngineFailed) as caught:
            await ready(engine)
        return str(caught.value)

    assert "some Ollama models use a format llama.cpp does not support" in asyncio.run(scenario())


def test_a_child_that_never_gets_healthy_is_stopped_at_the_health_timeout(tmp_path, registry):
    silent = script(tmp_path / "llama-server", "exec sleep 1000")
    launcher = LlamaServerLauncher(lambda: silent, registry_dir=registry, env=os.environ, health_timeout=0.5)

    async def scenario():
        engine = await launcher.launch(LaunchSpec("/m.gguf", 512))
        with pytest.raises(EngineFailed, match="not healthy after") as caught:
            await ready(engine)
        return engine.pid, caught.value

    pid, _ = asyncio.run(scenario())
    assert gone(pid) and read_records(registry) == []


def test_a_binary_that_cannot_run_is_engine_failed_naming_it(tmp_path, registry):
    broken = tmp_path / "llama-server"
    broken.write_bytes(b"\x7fELF not really")
    broken.chmod(0o755)
    launcher = LlamaServerLauncher(lambda: broken, registry_dir=registry, env=os.environ)
    before = set(Path(tempfile.gettempdir()).glob("llamagate-template-*"))

    async def start() -> None:
        engine = await launcher.launch(LaunchSpec("/m.gguf", 512, chat_template=TEMPLATE))
        async for _ in engine.wait_ready():  # it cannot be exec'd: it ends at once
            pass

    with pytest.raises(EngineFailed, match=str(broken)):
        asyncio.run(start())
    assert set(Path(tempfile.gettempdir()).glob("llamagate-template-*")) <= before
    assert read_records(registry) == []


# --- defect 2: the preflight ----------------------------------------------------------


def test_defect_2_check_passes_for_the_real_engine(launcher):
    launcher.check()


def test_defect_2_a_binary_that_cannot_run_fails_the_check_naming_it(tmp_path):
    broken = tmp_path / "llama-server"
    broken.write_bytes(b"\x7fELF not really")
    broken.chmod(0o755)

    with pytest.raises(EngineFailed, match=str(broken)):
        LlamaServerLauncher(lambda: broken, registry_dir=None, env=os.environ).check()


def test_defect_2_a_binary_that_is_not_executable_fails_the_check(tmp_path):
    plain = script(tmp_path / "llama-server", "exit 0")
    plain.chmod(0o644)
    with pytest.raises(EngineFailed, match=str(plain)):
        LlamaServerLauncher(lambda: plain, registry_dir=None, env=os.environ).check()


def test_defect_2_a_binary_whose_version_fails_fails_the_check_with_its_output(tmp_path):
    failing = script(tmp_path / "llama-server", "echo 'libggml.so: cannot open shared object file' >&2; exit 127")
    with pytest.raises(EngineFailed, match="cannot open shared object file"):
        LlamaServerLauncher(lambda: failing, registry_dir=None, env=os.environ).check()


def test_defect_2_no_engine_anywhere_is_engine_not_found_listing_the_places(tmp_path):
    def find() -> Path:
        return find_llama_server({"PATH": str(tmp_path / "nowhere")}, tmp_path / "cache")

    with pytest.raises(EngineNotFound, match="looked in") as caught:
        LlamaServerLauncher(find, registry_dir=None, env=os.environ).check()
    assert str(tmp_path / "cache") in str(caught.value)


def test_defect_2_the_check_runs_the_binary_once_per_version_of_the_file(tmp_path):
    runs = tmp_path / "runs"
    binary = script(tmp_path / "llama-server", f"echo run >> '{runs}'; exit 0")
    launcher = LlamaServerLauncher(lambda: binary, registry_dir=None, env=os.environ)

    launcher.check()
    launcher.check()
    assert runs.read_text().count("run") == 1

    script(binary, f"echo run >> '{runs}'; echo rebuilt >/dev/null; exit 0")  # a new build: size changes
    launcher.check()
    assert runs.read_text().count("run") == 2


# --- defect 3: the template file ---------------------------------------------------


def test_defect_3_a_crashed_child_does_not_leak_its_chat_template_file(launcher, smollm2_path):
    async def scenario():
        engine = await launcher.launch(smol(smollm2_path, chat_template=TEMPLATE))
        template = template_file_of(engine.pid)
        existed = template.exists()
        os.kill(engine.pid, signal.SIGKILL)  # a crash: nobody calls stop()
        ended = await engine.wait_exit()
        return template, existed, ended

    template, existed, ended = asyncio.run(scenario())
    assert existed and ended.how == "killed by SIGKILL"
    assert not template.exists()
