"""Speculative decoding for real (SPEC §15): each mode starts llama-server on
SmolLM2 through the project's launcher, drafts, and changes nothing of a
greedy reply."""

from __future__ import annotations

import asyncio
import os

import pytest

from llamagate.adapters.engine_discovery import find_llama_server
from llamagate.adapters.llama_process import LlamaServerLauncher
from llamagate.domain.chat import CallMessage, ChatCall, ResolvedSampling, Role, TextPart, Timings
from llamagate.domain.launch import LaunchSpec
from llamagate.domain.load_options import Speculative

pytestmark = pytest.mark.engine

GREEDY = ResolvedSampling(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
                          presence_penalty=0.0, seed=7)  # fmt: skip
# A line longer than ngram-simple's 12-token lookup, repeated: SmolLM2 goes on
# repeating it, so both n-gram drafters find their matches in the history.
LINE = "the cat sat on the mat and the dog sat on the log"
PROMPT = "Continue this list exactly as it goes:\n" + "\n".join([LINE] * 5)
TOKENS = 64
SPECULATING = [s for s in Speculative if s is not Speculative.OFF]


@pytest.fixture(scope="module")
def replies(cache_dir, smollm2_path, tmp_path_factory) -> dict[Speculative, tuple[str, Timings]]:
    """The same greedy request to one llama-server per mode, one after the other."""
    binary = find_llama_server({"PATH": ""}, cache_dir)
    launcher = LlamaServerLauncher(lambda: binary, registry_dir=tmp_path_factory.mktemp("children"), env=os.environ)
    call = ChatCall((CallMessage(Role.USER, (TextPart(PROMPT),)),), GREEDY, max_tokens=TOKENS)

    async def reply(speculative: Speculative) -> tuple[str, Timings]:
        engine = await launcher.launch(LaunchSpec(str(smollm2_path), 512, speculative=speculative))
        try:
            async for _ in engine.wait_ready():
                pass
            chunks = [chunk async for chunk in engine.chat.stream_chat(call)]
        finally:
            await engine.stop()
        timings = [c.timings for c in chunks if c.timings is not None]
        assert timings, "llama-server reported no timings"
        return "".join(c.content for c in chunks), timings[-1]

    async def all_modes():
        return {speculative: await reply(speculative) for speculative in Speculative}

    return asyncio.run(all_modes())


@pytest.mark.parametrize("speculative", SPECULATING, ids=lambda s: s.value)
def test_speculation_leaves_the_greedy_reply_as_it_was(replies, speculative):
    plain, timings = replies[Speculative.OFF]
    assert timings.predicted_n == TOKENS  # the whole budget: long enough for drafts to matter
    assert replies[speculative][0] == plain


@pytest.mark.parametrize("speculative", SPECULATING, ids=lambda s: s.value)
def test_each_speculative_mode_drafts_and_its_drafts_are_accepted(replies, speculative):
    _, timings = replies[speculative]
    assert 0 < timings.draft_accepted_n <= timings.draft_n


def test_without_speculation_nothing_is_drafted(replies):
    _, timings = replies[Speculative.OFF]
    assert (timings.draft_n, timings.draft_accepted_n) == (0, 0)


def test_default_is_llama_cpps_own_ngram_mod_preset(replies):
    # --spec-default is ngram-mod with n-match 24, n-min 48, n-max 64 in this
    # llama.cpp (common/arg.cpp): the values SPEC §15 gives ngram-mod, so the
    # two draft exactly alike. A llama.cpp that changes its preset shows here.
    default, mod = replies[Speculative.DEFAULT][1], replies[Speculative.NGRAM_MOD][1]
    assert (default.draft_n, default.draft_accepted_n) == (mod.draft_n, mod.draft_accepted_n)
