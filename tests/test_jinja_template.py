"""The jinja2 chat template renderer: HF's helpers, llama.cpp's list methods,
and bounds that stop a template which would not end."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamagate.adapters.jinja_template import JinjaTemplateRenderer
from llamagate.domain.errors import TemplateError

USER = ({"role": "user", "content": "hi"},)


def render(template: str, messages=USER, tools=(), *, extra=None, renderer: JinjaTemplateRenderer | None = None,
           add_generation_prompt: bool = False) -> str:
    return (renderer or JinjaTemplateRenderer()).render(
        template, messages, tools, add_generation_prompt=add_generation_prompt, extra=extra or {})


def test_hf_helpers_and_variables():
    template = ("{{ bos_token }}{% for m in messages %}{% generation %}{{ m.role }}:{{ m.content }}"
                "{% endgeneration %}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
                "{{ strftime_now('%Y') }}{{ eos_token }}{{ enable_thinking }}")
    renderer = JinjaTemplateRenderer(bos_token="<s>", eos_token="</s>")

    out = render(template, renderer=renderer, add_generation_prompt=True, extra={"enable_thinking": True})

    assert out == f"<s>user:hi>{datetime.now().year}</s>True"


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=4),
       st.sampled_from([None, 2]), st.booleans(), st.booleans())
def test_tojson_takes_json_dumps_keywords(value, indent, ensure_ascii, sort_keys):
    template = ("{{ extra_value|tojson(indent=indent, ensure_ascii=ensure_ascii, separators=(',', ':'), "
                "sort_keys=sort_keys) }}")
    variables = {"extra_value": value, "indent": indent, "ensure_ascii": ensure_ascii, "sort_keys": sort_keys}

    out = render(template, extra=variables)

    assert out == json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=(",", ":"),
                             sort_keys=sort_keys)


def test_tojson_of_a_filtered_sequence_is_a_list_as_in_llama_cpp():
    tools = ({"function": {"name": "a"}}, {"function": {"name": "b"}})
    assert render("{{ tools|map(attribute='function')|tojson }}", tools=tools) == '[{"name": "a"}, {"name": "b"}]'


def test_blocks_are_trimmed_and_loops_can_break_as_in_hf():
    template = ("  {% for i in range(5) %}\n{% if i == 1 %}{% continue %}{% endif %}"
                "{% if i == 3 %}{% break %}{% endif %}{{ i }}\n{% endfor %}")
    assert render(template) == "0\n2\n"


def test_raise_exception_is_a_template_error_saying_why():
    with pytest.raises(TemplateError, match="System role not supported"):
        render("{{ raise_exception('System role not supported') }}")


@pytest.mark.parametrize("template", ["{% if %}", "{% for m in messages %}", "{{ x.y.z }}", "{{ 1 / 0 }}"])
def test_a_template_that_does_not_compile_or_render_is_a_template_error(template):
    with pytest.raises(TemplateError):
        render(template)


def test_lists_append_as_in_llama_cpp_without_touching_the_callers_data():
    messages = [{"role": "user", "content": "hi"}]
    template = ("{% set ns = namespace(ids=[]) %}{% set _ = ns.ids.append(7) %}"
                "{% set _ = messages.append(1) %}{{ ns.ids }}")
    assert render(template, messages=messages) == "[7]"
    assert messages == [{"role": "user", "content": "hi"}]


def test_other_mutation_stays_forbidden():
    with pytest.raises(TemplateError, match="unsafe"):
        render("{% set d = {} %}{% set _ = d.update({'a': 1}) %}")


def test_a_template_that_spins_without_output_is_stopped_in_time():
    spin = ("{% set xs = range(1000)|list %}"
            "{% for a in xs %}{% for b in xs %}{% for c in xs %}{% endfor %}{% endfor %}{% endfor %}")
    with pytest.raises(TemplateError, match="too long"):
        render(spin, renderer=JinjaTemplateRenderer(seconds=0.2))


def test_the_time_bound_leaves_the_previous_tracer_in_place():
    def tracer(frame, event, arg):
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        render("{{ messages[0].content }}")
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)


@pytest.mark.parametrize("template", [
    "{% for a in range(100000) %}{% for b in range(100000) %}0123456789{% endfor %}{% endfor %}",
    "{{ 'x' * 100000000 }}",
    "{{ ['x'] * 100000000 }}",
    "{{ 2 ** 100000000 }}",
])
def test_a_huge_output_is_refused_before_it_is_built(template):
    with pytest.raises(TemplateError):
        render(template, renderer=JinjaTemplateRenderer(max_output_chars=10_000))


def test_a_huge_template_is_refused():
    with pytest.raises(TemplateError, match="characters"):
        render("x" * (1 << 20))
