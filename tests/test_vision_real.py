"""Vision for real (SPEC §13): SmolLM2 with a tiny projector, started by the
project's launcher, images sent through the project's HTTP adapter."""

from __future__ import annotations

import asyncio
import os

import pytest
from projector import IMAGE_TOKENS, tiny_png

from llamagate.adapters.engine_discovery import find_llama_server
from llamagate.adapters.llama_process import LlamaServerLauncher
from llamagate.domain.chat import CallMessage, ChatCall, ChatChunk, Image, ResolvedSampling, Role, TextPart
from llamagate.domain.launch import LaunchSpec
from llamagate.domain.load_options import Speculative

pytestmark = pytest.mark.engine

GREEDY = ResolvedSampling(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
                          presence_penalty=0.0, seed=1)  # fmt: skip
QUESTION = TextPart("What is in this picture?")


def ask(*parts: TextPart | Image) -> ChatCall:
    return ChatCall((CallMessage(Role.USER, parts),), GREEDY, max_tokens=2)


@pytest.fixture(scope="module")
def answers(cache_dir, smollm2_path, tiny_projector, tmp_path_factory):
    """One llama-server with the projector: its capabilities, then the streamed
    chunks of a text-only question, the same with one image, and with two."""
    binary = find_llama_server({"PATH": ""}, cache_dir)
    launcher = LlamaServerLauncher(lambda: binary, registry_dir=tmp_path_factory.mktemp("children"), env=os.environ)
    # Speculation asked for too: a vision load must start without it (SPEC §15).
    spec = LaunchSpec(str(smollm2_path), 1024, mmproj_path=str(tiny_projector), speculative=Speculative.NGRAM_MOD)
    image = Image("image/png", tiny_png())

    async def scenario():
        engine = await launcher.launch(spec)
        try:
            async for _ in engine.wait_ready():
                pass
            caps = await engine.chat.server_capabilities()
            calls = (ask(QUESTION), ask(QUESTION, image), ask(QUESTION, image, image))
            return caps, [[chunk async for chunk in engine.chat.stream_chat(call)] for call in calls]
        finally:
            await engine.stop()

    return asyncio.run(scenario())


def prompt_tokens(chunks: list[ChatChunk]) -> int:
    usages = [c.usage for c in chunks if c.usage is not None]
    assert usages, "llama-server reported no usage"
    return usages[-1].prompt_tokens


def test_llama_server_with_the_projector_reports_vision(answers):
    caps, _ = answers
    assert caps.vision is True


def test_each_image_is_embedded_as_prompt_tokens(answers):
    _, (text_only, one_image, two_images) = answers
    # Each image adds its embeddings (IMAGE_TOKENS) and the markers around them.
    assert prompt_tokens(one_image) >= prompt_tokens(text_only) + IMAGE_TOKENS
    assert prompt_tokens(two_images) - prompt_tokens(one_image) == prompt_tokens(one_image) - prompt_tokens(text_only)


def test_a_question_with_an_image_is_answered(answers):
    _, replies = answers
    for chunks in replies:
        assert "".join(c.content for c in chunks)
        assert [c.finish_reason for c in chunks if c.finish_reason]
