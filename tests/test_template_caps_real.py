"""The detection before launch against llama-server itself: every chat
template shipped with the pinned llama.cpp, loaded as a template override on
SmolLM2 by the service's own launcher, must get from our renderer the tools
and preserved-reasoning answers that ``/props`` gives (SPEC §3)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from llamagate.adapters.engine_discovery import find_llama_server
from llamagate.adapters.jinja_template import JinjaTemplateRenderer
from llamagate.adapters.llama_process import LlamaServerLauncher
from llamagate.domain.capabilities import ServerCapabilities, capabilities_from_template
from llamagate.domain.launch import LaunchSpec

pytestmark = pytest.mark.engine

# Each start is ~1 s, mostly waiting on the model file; a few at once keep
# the whole sweep short on two cores.
AT_ONCE = 4

# Templates where our reading may differ from llama-server's, with why.
# At most two; none are left today.
KNOWN_DISAGREEMENTS: dict[str, str] = {}


async def engine_caps(launcher: LlamaServerLauncher, model: Path, template: str,
                      gate: asyncio.Semaphore) -> ServerCapabilities:
    async with gate:
        spec = LaunchSpec(model_path=str(model), context_length=256, threads=1, chat_template=template,
                          offload_all=True)  # no --fit pass: SmolLM2 fits anywhere
        engine = await launcher.launch(spec)
        try:
            async for _ in engine.wait_ready():
                pass
            return await engine.chat.server_capabilities()
        finally:
            await engine.stop()


def every_engine_caps(launcher: LlamaServerLauncher, model: Path, templates: list[Path]) -> list[ServerCapabilities]:
    async def sweep() -> list[ServerCapabilities]:
        gate = asyncio.Semaphore(AT_ONCE)
        return await asyncio.gather(*(engine_caps(launcher, model, t.read_text(), gate) for t in templates))

    return asyncio.run(sweep())


def test_detection_agrees_with_llama_server_on_every_shipped_template(llama_cpp_tree, smollm2_path, cache_dir,
                                                                      tmp_path):
    templates = sorted((llama_cpp_tree / "models" / "templates").glob("*.jinja"))
    assert len(templates) > 50
    binary = find_llama_server({"PATH": ""}, cache_dir)
    launcher = LlamaServerLauncher(lambda: binary, registry_dir=tmp_path / "children", env=os.environ)
    renderer = JinjaTemplateRenderer()

    reported = every_engine_caps(launcher, smollm2_path, templates)

    disagreements: dict[str, str] = {}
    for path, engine in zip(templates, reported, strict=True):
        assert engine.tools is not None and engine.preserve_thinking is not None, f"{path.name}: /props said nothing"
        ours = capabilities_from_template(path.read_text(), path.stem, vision=False, renderer=renderer)
        differ = [f"{name} ours={mine} /props={theirs}"
                  for name, mine, theirs in (("tools", ours.tools, engine.tools),
                                             ("preserve", ours.preserve_thinking, engine.preserve_thinking))
                  if mine != theirs]
        if differ:
            disagreements[path.stem] = ", ".join(differ)
    assert set(disagreements) == set(KNOWN_DISAGREEMENTS), disagreements
    # The sweep means something only if both answers occur.
    assert {e.tools for e in reported} == {True, False}
    assert {e.preserve_thinking for e in reported} == {True, False}
