"""SPEC §3 capability rules, on the real chat templates shipped with llama.cpp,
and the rendering probes that read tools and preserved reasoning."""

from __future__ import annotations

import json

import pytest
from fakes import GIB, FakeRenderer, model_facts
from hypothesis import given
from hypothesis import strategies as st

from llamagate.adapters.jinja_template import JinjaTemplateRenderer
from llamagate.domain.capabilities import (
    Capabilities,
    ReasoningStyle,
    ServerCapabilities,
    capabilities_from_template,
    default_thinking_on,
    disagreements,
    launch_template_kwargs,
    merge_server_caps,
    probe_template,
    request_template_kwargs,
)
from llamagate.domain.launch import launch_from_plan
from llamagate.domain.load_options import LoadOptions
from llamagate.domain.load_plan import plan_load

JINJA = JinjaTemplateRenderer()


def caps_of(llama_cpp_tree, name: str, model_id: str | None = None, renderer=None) -> Capabilities:
    template = (llama_cpp_tree / "models" / "templates" / f"{name}.jinja").read_text()
    return capabilities_from_template(template, model_id or name, vision=False, renderer=renderer)


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
@pytest.mark.parametrize("renderer", [None, JINJA], ids=["string rules", "rendered"])
def test_real_templates_get_the_expected_capabilities(llama_cpp_tree, template, style, always_on, tools, renderer):
    caps = caps_of(llama_cpp_tree, template, renderer=renderer)
    assert caps.reasoning_style is style
    assert caps.reasoning_always_on is always_on
    assert caps.reasoning is (style is not ReasoningStyle.NONE or always_on)
    assert caps.tools is tools


def test_every_shipped_template_is_classified_consistently(llama_cpp_tree):
    templates = sorted((llama_cpp_tree / "models" / "templates").glob("*.jinja"))
    assert len(templates) > 50
    for path in templates:
        caps = capabilities_from_template(path.read_text(), path.stem, vision=False, renderer=JINJA)
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


# --- rendering probes -------------------------------------------------------

CHAT = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
TOOLS_AS_JSON = "{% if tools|length > 0 %}Tools: {{ tools|tojson }}\n{% endif %}"  # no SPEC §3 marker
CALLS_AS_OBJECTS = ("{% for m in messages %}{% for c in m.tool_calls or [] %}"
                    "{% for k, v in c.function.arguments.items() %}{{ k }}={{ v }}{% endfor %}{% endfor %}"
                    "{{ m.content }}{% endfor %}")
CALLS_AS_STRINGS = ("{% for m in messages %}{% for c in m.tool_calls or [] %}"
                    "{% if c.function.arguments is mapping %}{{ raise_exception('JSON strings only') }}{% endif %}"
                    "{{ c.function.arguments }}{% endfor %}{{ m.content }}{% endfor %}")
NO_CALLS = ("{% for m in messages %}{% if m.tool_calls %}{{ raise_exception('no tool calls') }}{% endif %}"
            "{{ m.content }}{% endfor %}")


def rendered(template: str) -> Capabilities:
    return capabilities_from_template(template, "some-model", vision=False, renderer=JINJA)


@pytest.mark.parametrize(
    ("template", "tools"),
    [
        (TOOLS_AS_JSON + CHAT, True),  # the string rules miss it
        ("{#- {% if tools %} is not how this one works #}" + CHAT, False),  # the string rules see a marker
        (TOOLS_AS_JSON + CALLS_AS_OBJECTS, True),  # JSON-string arguments would break it: never tried
        (TOOLS_AS_JSON + CALLS_AS_STRINGS, True),
        (TOOLS_AS_JSON + NO_CALLS, False),  # describes tools but cannot show a call: llama.cpp says no
    ],
)
def test_tools_are_what_rendering_shows(template, tools):
    assert rendered(template).tools is tools


EVERY_REASONING = ("{% for m in messages %}{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>"
                   "{% endif %}{{ m.content }}{% endfor %}")
LAST_REASONING = ("{% set last = (messages|selectattr('role', 'equalto', 'assistant')|list)[-1] %}"
                  "{% for m in messages %}{% if m is sameas last %}<think>{{ m.reasoning_content }}</think>"
                  "{% endif %}{{ m.content }}{% endfor %}")
KEPT_UNLESS_CLEARED = ("{% for m in messages %}{% if m.reasoning_content and not clear_thinking %}"
                       "<think>{{ m.reasoning_content }}</think>{% endif %}{{ m.content }}{% endfor %}")


@pytest.mark.parametrize(
    ("template", "preserved"),
    [
        (EVERY_REASONING, True),
        (LAST_REASONING, False),
        (KEPT_UNLESS_CLEARED, True),  # no "preserve_thinking" in it: the string rule says no
        (LAST_REASONING + "{# preserve_thinking #}", False),  # the word alone keeps nothing
    ],
)
def test_preserved_reasoning_is_an_earlier_turns_reasoning_in_the_prompt(template, preserved):
    assert rendered(template).preserve_thinking is preserved


def test_a_template_that_renders_nothing_falls_back_to_the_string_rules():
    broken = "{% if tools %}{{ preserve_thinking }}{% for %}"  # does not compile
    caps = rendered(broken)
    assert caps.tools and caps.preserve_thinking
    assert caps == capabilities_from_template(broken, "some-model", vision=False)


def test_the_probes_are_llama_cpps_conversations():
    fake = FakeRenderer(lambda messages, tools, extra: "")
    probe_template("T", fake)
    shapes = [([m["role"] for m in messages], bool(tools), dict(extra)) for _, messages, tools, extra in fake.renders]
    tool_roles = ["user", "assistant", "tool", "assistant", "user"]
    assert shapes == [
        (tool_roles, True, {}),  # arguments as an object
        (tool_roles, True, {}),  # as a JSON string, since nothing showed the object
        (["user", "assistant", "user", "assistant", "user"], False,
         {"enable_thinking": True, "preserve_thinking": True, "clear_thinking": False,
          "truncate_history_thinking": False, "drop_thinking": False}),
        # each reasoning switch off and on, in SPEC §3's order (none changes this prompt)
        (["user"], False, {"enable_thinking": False}), (["user"], False, {"enable_thinking": True}),
        (["user"], False, {"reasoning_effort": "low"}), (["user"], False, {"reasoning_effort": "high"}),
        (["user"], False, {"thinking": False}), (["user"], False, {"thinking": True}),
    ]
    assert all(template == "T" for template, *_ in fake.renders)


def echo(messages, tools, extra) -> str:
    """A template that shows everything it is given."""
    return json.dumps([messages, tools, extra])


MARKER_SOURCES = st.lists(st.sampled_from(
    ["{% if tools %}", "enable_thinking", "reasoning_effort", "thinking", "<think>", "</think>",
     "reasoning_content", "preserve_thinking", "'role' == 'tool'", "text"]), min_size=1, max_size=6).map("".join)
RENDERERS = {"fails": lambda *_: None, "shows nothing": lambda *_: "", "shows everything": echo}


@given(text=MARKER_SOURCES, model=st.sampled_from(["deepseek-r1", "qwen3-4b"]), how=st.sampled_from(sorted(RENDERERS)))
def test_rendering_decides_tools_preserved_reasoning_and_the_style(text, model, how):
    by_strings = capabilities_from_template(text, model, vision=False)

    caps = capabilities_from_template(text, model, vision=False, renderer=FakeRenderer(RENDERERS[how]))

    assert caps.vision == by_strings.vision
    expected = {"fails": (by_strings.tools, by_strings.preserve_thinking, by_strings.reasoning_style),
                "shows nothing": (False, False, ReasoningStyle.NONE),
                # enable_thinking is the first switch tried, and it changes what is shown
                "shows everything": (True, True, ReasoningStyle.ENABLE_THINKING)}[how]
    assert (caps.tools, caps.preserve_thinking, caps.reasoning_style) == expected
    if how == "fails":
        assert caps == by_strings


@pytest.mark.parametrize(
    ("switch", "style"),
    [("enable_thinking", ReasoningStyle.ENABLE_THINKING), ("reasoning_effort", ReasoningStyle.REASONING_EFFORT),
     ("thinking", ReasoningStyle.THINKING)],
)
def test_the_style_is_the_first_switch_that_changes_the_prompt(switch, style):
    template = "{{ messages[0].content }}{% if " + switch + " in (true, 'high') %}<think>{% endif %}"
    caps = capabilities_from_template(template, "any-model", vision=False, renderer=JINJA)
    assert caps.reasoning_style is style and caps.reasoning and not caps.reasoning_always_on


def test_a_switch_named_in_the_template_but_changing_nothing_is_no_style():
    # NVIDIA-Nemotron-Nano-v2 keeps its own ns.enable_thinking, set from "/think" in the system prompt.
    template = "{%- set ns = namespace(enable_thinking=true) -%}{{ messages[0].content }}"
    assert capabilities_from_template(template, "m", vision=False).reasoning_style is ReasoningStyle.ENABLE_THINKING
    assert capabilities_from_template(template, "m", vision=False, renderer=JINJA).reasoning_style \
        is ReasoningStyle.NONE


@pytest.mark.parametrize("template", [None, ""])
def test_no_template_is_not_rendered(template):
    fake = FakeRenderer(echo)
    caps = capabilities_from_template(template, "some-model", vision=False, renderer=fake)
    assert fake.renders == [] and not caps.tools and not caps.preserve_thinking


def test_a_load_reads_its_capabilities_through_the_renderer():
    facts = model_facts()  # its template has no tool marker
    options = LoadOptions()
    load_plan = plan_load(facts, options, [], 16 * GIB)
    fake = FakeRenderer(echo)

    info, _ = launch_from_plan(load_plan, options, renderer=fake)
    plain, _ = launch_from_plan(load_plan, options)

    assert info.capabilities.tools and not plain.capabilities.tools
    assert {template for template, *_ in fake.renders} == {facts.chat_template}


@given(st.builds(Capabilities, tools=st.booleans(), preserve_thinking=st.booleans(), vision=st.booleans()),
       st.builds(ServerCapabilities, tools=st.none() | st.booleans(), preserve_thinking=st.none() | st.booleans(),
                 vision=st.none() | st.booleans()))
def test_disagreements_are_exactly_what_merging_the_engines_word_changes(detected, server):
    changed = merge_server_caps(detected, server) != detected
    assert bool(disagreements(detected, server)) is changed

