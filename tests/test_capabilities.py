"""SPEC §3 capability rules, on the real chat templates shipped with llama.cpp."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.domain.capabilities import (
    Capabilities,
    ReasoningStyle,
    ServerCapabilities,
    capabilities_from_template,
    default_thinking_on,
    launch_template_kwargs,
    merge_server_caps,
    request_template_kwargs,
)


def caps_of(llama_cpp_tree, name: str, model_id: str | None = None) -> Capabilities:
    template = (llama_cpp_tree / "models" / "templates" / f"{name}.jinja").read_text()
    return capabilities_from_template(template, model_id or name, vision=False)


@pytest.mark.parametrize(
    ("template", "style", "always_on", "tools"),
    [
        ("Qwen-Qwen3-0.6B", ReasoningStyle.ENABLE_THINKING, False, True),
        ("openai-gpt-oss-120b", ReasoningStyle.REASONING_EFFORT, False, True),
        ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B", ReasoningStyle.NONE, True, False),
        ("meta-llama-Llama-3.1-8B-Instruct", ReasoningStyle.NONE, False, True),
        ("google-gemma-2-2b-it", ReasoningStyle.NONE, False, False),
        ("Qwen-Qwen2.5-7B-Instruct", ReasoningStyle.NONE, False, True),
    ],
)
def test_real_templates_get_the_expected_capabilities(llama_cpp_tree, template, style, always_on, tools):
    caps = caps_of(llama_cpp_tree, template)
    assert caps.reasoning_style is style
    assert caps.reasoning_always_on is always_on
    assert caps.reasoning is (style is not ReasoningStyle.NONE or always_on)
    assert caps.tools is tools


def test_every_shipped_template_is_classified_consistently(llama_cpp_tree):
    templates = sorted((llama_cpp_tree / "models" / "templates").glob("*.jinja"))
    assert len(templates) > 50
    for path in templates:
        caps = capabilities_from_template(path.read_text(), path.stem, vision=False)
        assert not (caps.reasoning_always_on and caps.reasoning_style is not ReasoningStyle.NONE), path.name
        assert caps.reasoning == (caps.reasoning_style is not ReasoningStyle.NONE or caps.reasoning_always_on)


def test_thinking_word_counts_only_for_deepseek_ids():
    template = "{% if thinking %}<think>{% endif %}"
    assert capabilities_from_template(template, "DeepSeek-V3.1", vision=False).reasoning_style is ReasoningStyle.THINKING
    other = capabilities_from_template(template, "some-model", vision=False)
    assert other.reasoning_style is ReasoningStyle.NONE and not other.reasoning


def test_small_qwen35_starts_with_thinking_off_and_others_on():
    assert not default_thinking_on("Qwen3.5-4B-Instruct-Q4_K_M")
    assert not default_thinking_on("qwen3.6-0.8b")
    assert default_thinking_on("Qwen3.5-27B")
    assert default_thinking_on("Qwen3-4B")
    caps = Capabilities(reasoning=True, reasoning_style=ReasoningStyle.REASONING_EFFORT)
    assert launch_template_kwargs(caps, "gpt-oss-20b") == {"reasoning_effort": "high"}
    assert launch_template_kwargs(Capabilities(reasoning=True, reasoning_always_on=True), "x") == {}


@given(
    style=st.sampled_from(ReasoningStyle),
    preserve=st.booleans(),
    enable=st.none() | st.booleans(),
    effort=st.sampled_from([None, "low", "medium", "high"]),
    keep=st.none() | st.booleans(),
)
def test_request_kwargs_send_only_what_the_template_understands(style, preserve, enable, effort, keep):
    caps = Capabilities(reasoning=style is not ReasoningStyle.NONE, reasoning_style=style, preserve_thinking=preserve)

    kwargs = request_template_kwargs(caps, enable_thinking=enable, reasoning_effort=effort, preserve_thinking=keep)

    allowed = {ReasoningStyle.NONE: set(), ReasoningStyle.ENABLE_THINKING: {"enable_thinking"},
               ReasoningStyle.THINKING: {"thinking"}, ReasoningStyle.REASONING_EFFORT: {"reasoning_effort"}}[style]
    assert set(kwargs) <= allowed | ({"preserve_thinking"} if preserve else set())
    if style is ReasoningStyle.REASONING_EFFORT:
        expected = effort or ({True: "high", False: "low"}[enable] if enable is not None else None)
        assert kwargs.get("reasoning_effort") == expected
    if preserve and keep is not None:
        assert kwargs["preserve_thinking"] is keep


def test_what_the_engine_reports_settles_tools_preserved_reasoning_and_vision():
    caps = Capabilities(tools=False)
    merged = merge_server_caps(caps, ServerCapabilities(tools=True, preserve_thinking=True, vision=True))
    assert merged.tools and merged.preserve_thinking and merged.vision
    assert not merge_server_caps(Capabilities(tools=True), ServerCapabilities(tools=False)).tools


@given(st.builds(Capabilities, reasoning=st.booleans(), tools=st.booleans(), vision=st.booleans(),
                 preserve_thinking=st.booleans()))
def test_an_engine_that_says_nothing_changes_nothing(caps):
    assert merge_server_caps(caps, ServerCapabilities()) == caps
