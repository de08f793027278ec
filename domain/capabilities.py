"""What a model can do, read from its chat template (SPEC §3).

Tools, preserved reasoning and the reasoning style come from rendering the
template, as llama.cpp probes it (``probe_template``): the style is the
first switch whose value changes the prompt. The string rules over the Jinja
source decide them only when it does not render, and always decide
always-on reasoning and the default. What the engine
reports after launch (``ServerCapabilities``) is the cross-check applied by
``merge_server_caps``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from llamagate.domain.errors import TemplateError

if TYPE_CHECKING:  # ports imports this module
    from llamagate.domain.ports import TemplateRenderer, TemplateValue


class ReasoningStyle(enum.Enum):
    """How a template switches reasoning on and off (SPEC §3)."""

    NONE = "none"
    ENABLE_THINKING = "enable_thinking"
    REASONING_EFFORT = "reasoning_effort"
    THINKING = "thinking"


@dataclass(frozen=True)
class Capabilities:
    reasoning: bool = False
    reasoning_style: ReasoningStyle = ReasoningStyle.NONE
    reasoning_always_on: bool = False
    preserve_thinking: bool = False
    tools: bool = False
    vision: bool = False


_TOOL_MARKERS = (
    "{%- if tools %}",
    "{%- if tools -%}",
    "{% if tools %}",
    "{% if tools -%}",
    '"role" == "tool"',
    "'role' == 'tool'",
    'message.role == "tool"',
    "message.role == 'tool'",
)

# "Qwen3.5-4B", "qwen3.6_0.8b": the parameter count in billions.
_SIZE_IN_ID = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)b(?![a-z0-9])")
_SMALL_QWEN_THINKS_OFF_BELOW_B = 9.0


def capabilities_from_template(template: str | None, model_id: str, *, vision: bool,
                               renderer: TemplateRenderer | None = None) -> Capabilities:
    """``renderer`` renders the template (None: the string rules alone)."""
    text = template or ""
    rendered = probe_template(text, renderer) if renderer is not None and text else None
    style = rendered.style if rendered and rendered.style else _reasoning_style(text, model_id)
    always_on = style is ReasoningStyle.NONE and (  # reasoning_content: the template's own variable
        ("<think>" in text and "</think>" in text) or "reasoning_content" in text
    )
    return Capabilities(
        reasoning=style is not ReasoningStyle.NONE or always_on,
        reasoning_style=style,
        reasoning_always_on=always_on,
        preserve_thinking=rendered.preserve_reasoning if rendered else "preserve_thinking" in text,
        tools=rendered.tools if rendered else any(marker in text for marker in _TOOL_MARKERS),
        vision=vision,
    )


# --- rendering probes (llama.cpp's common/jinja/caps.cpp) -----------------
#
# llama.cpp renders a few fixed conversations and watches which input values
# the template reads; a renderer gives only the output, so each probe plants
# a value that shows there only if the template used it.

_Records = Sequence[Mapping[str, "TemplateValue"]]  # messages or tools

_TOOL_DESCRIPTION = "Tool description"  # shows only where the tool's definition is rendered
_ARG_VALUE = "arg-value-marker"  # llama.cpp sends "value", a word a template may hold itself
_REASONING_PLACEHOLDER = "<REASONING_CONTENT_PLACEHOLDER>"

_TOOLS: _Records = (
    {"name": "tool", "type": "function", "function": {
        "name": "tool1",
        "description": _TOOL_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {"arg": {"type": "string", "description": "Arg description"}},
            "required": ["arg"],
        },
    }},
)  # fmt: skip

# Keeping the reasoning of every earlier turn, in every spelling llama.cpp sets.
_PRESERVE_REASONING: Mapping[str, TemplateValue] = {
    "enable_thinking": True,
    "preserve_thinking": True,
    "clear_thinking": False,
    "truncate_history_thinking": False,
    "drop_thinking": False,
}


def _tool_conversation(arguments: TemplateValue) -> _Records:
    """A call, its result, the answer and a new question; ``arguments`` as an
    object or as the JSON string OpenAI clients send."""
    call: Mapping[str, TemplateValue] = {
        "id": "call00001", "type": "function", "function": {"name": "tool1", "arguments": arguments},
    }
    return (
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "", "tool_calls": [call]},  # some templates want "" beside calls
        {"role": "tool", "content": "Tool response", "tool_call_id": "call00001"},
        {"role": "assistant", "content": "The tool response was 'tool response'"},
        {"role": "user", "content": "User message"},
    )


def _reasoning_conversation() -> _Records:
    """Two answers with reasoning: the earlier one's must survive to count."""
    return (
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "Assistant message", "reasoning_content": _REASONING_PLACEHOLDER},
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "Assistant message", "reasoning_content": "Reasoning content"},
        {"role": "user", "content": "User message"},
    )


@dataclass(frozen=True)
class RenderedCapabilities:
    tools: bool
    preserve_reasoning: bool
    style: ReasoningStyle | None = None  # None: a switch's renderings failed, the string rules decide


# The reasoning switches in SPEC §3's order, each with an off and an on value:
# the first whose value changes the rendered prompt is the template's.
_SWITCHES = (
    (ReasoningStyle.ENABLE_THINKING, "enable_thinking", False, True),
    (ReasoningStyle.REASONING_EFFORT, "reasoning_effort", "low", "high"),
    (ReasoningStyle.THINKING, "thinking", False, True),
)


def probe_template(template: str, renderer: TemplateRenderer) -> RenderedCapabilities | None:
    """What rendering shows, as llama-server's ``chat_template_caps`` would
    say it; None when the template renders none of the probes."""

    def render(messages: _Records, tools: _Records = (),
               extra: Mapping[str, TemplateValue] | None = None) -> str | None:
        try:
            return renderer.render(template, messages, tools, add_generation_prompt=True, extra=extra or {})
        except TemplateError:
            return None

    with_objects = render(_tool_conversation({"arg": _ARG_VALUE}), _TOOLS)
    # Arguments the template renders as an object settle it; else (or when
    # objects break it) it must take the JSON string OpenAI clients send.
    objects_settle = with_objects is not None and _ARG_VALUE in with_objects
    with_string = None if objects_settle else render(_tool_conversation(f'{{"arg": "{_ARG_VALUE}"}}'), _TOOLS)
    reasoning = render(_reasoning_conversation(), extra=_PRESERVE_REASONING)
    if with_objects is None and with_string is None and reasoning is None:
        return None
    # Supported unless a rendering that worked left the tool's definition
    # out, or the arguments fit neither way.
    shown = all(_TOOL_DESCRIPTION in output for output in (with_objects, with_string) if output is not None)
    return RenderedCapabilities(
        tools=(objects_settle or with_string is not None) and shown,
        preserve_reasoning=reasoning is not None and _REASONING_PLACEHOLDER in reasoning,
        style=_style_by_rendering(render),
    )


def _style_by_rendering(render: Callable[..., str | None]) -> ReasoningStyle | None:
    question: _Records = ({"role": "user", "content": "User message"},)
    for style, name, off, on in _SWITCHES:
        renderings = render(question, extra={name: off}), render(question, extra={name: on})
        if None in renderings:
            return None
        if renderings[0] != renderings[1]:
            return style
    return ReasoningStyle.NONE


def _reasoning_style(text: str, model_id: str) -> ReasoningStyle:
    if "enable_thinking" in text:
        return ReasoningStyle.ENABLE_THINKING
    if "reasoning_effort" in text:
        return ReasoningStyle.REASONING_EFFORT
    if "thinking" in text and "deepseek" in model_id.lower():
        return ReasoningStyle.THINKING
    return ReasoningStyle.NONE


def default_thinking_on(model_id: str) -> bool:
    """Thinking starts on, except for Qwen3.5/3.6 models under 9B parameters."""
    lowered = model_id.lower()
    if not re.search(r"qwen3\.[56]", lowered):
        return True
    sizes = [float(m) for m in _SIZE_IN_ID.findall(lowered)]
    return not sizes or max(sizes) >= _SMALL_QWEN_THINKS_OFF_BELOW_B


def launch_template_kwargs(caps: Capabilities, model_id: str) -> dict[str, bool | str]:
    """The default ``--chat-template-kwargs`` for a reasoning model (empty if none)."""
    on = default_thinking_on(model_id)
    if caps.reasoning_style is ReasoningStyle.ENABLE_THINKING:
        return {"enable_thinking": on}
    if caps.reasoning_style is ReasoningStyle.REASONING_EFFORT:
        return {"reasoning_effort": "high" if on else "low"}
    if caps.reasoning_style is ReasoningStyle.THINKING:
        return {"thinking": on}
    return {}


def request_template_kwargs(
    caps: Capabilities,
    *,
    enable_thinking: bool | None,
    reasoning_effort: str | None,
    preserve_thinking: bool | None,
) -> dict[str, bool | str]:
    """Per-request ``chat_template_kwargs`` (SPEC §3): only what the request set."""
    kwargs: dict[str, bool | str] = {}
    style = caps.reasoning_style
    if style is ReasoningStyle.ENABLE_THINKING and enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    elif style is ReasoningStyle.THINKING and enable_thinking is not None:
        kwargs["thinking"] = enable_thinking
    elif style is ReasoningStyle.REASONING_EFFORT:
        if reasoning_effort in ("low", "medium", "high"):
            kwargs["reasoning_effort"] = reasoning_effort
        elif enable_thinking is not None:
            kwargs["reasoning_effort"] = "high" if enable_thinking else "low"
    if caps.preserve_thinking and preserve_thinking is not None:
        kwargs["preserve_thinking"] = preserve_thinking
    return kwargs


@dataclass(frozen=True)
class ServerCapabilities:
    """What the engine itself says after rendering the template (None: it did not say)."""

    tools: bool | None = None
    preserve_thinking: bool | None = None
    vision: bool | None = None


def merge_server_caps(caps: Capabilities, server: ServerCapabilities) -> Capabilities:
    """The engine renders the template, so what it reports settles tools,
    preserved reasoning and vision; the string rules keep the rest."""
    return replace(
        caps,
        tools=caps.tools if server.tools is None else server.tools,
        preserve_thinking=caps.preserve_thinking if server.preserve_thinking is None else server.preserve_thinking,
        vision=caps.vision if server.vision is None else server.vision,
    )


def disagreements(detected: Capabilities, server: ServerCapabilities) -> list[str]:
    """Where the detection before launch differs from what the engine says
    (the engine decides; a difference is worth a log line)."""
    pairs = (("tools", detected.tools, server.tools),
             ("preserved reasoning", detected.preserve_thinking, server.preserve_thinking),
             ("vision", detected.vision, server.vision))
    return [f"{name}: detected {mine}, the engine says {theirs}"
            for name, mine, theirs in pairs if theirs is not None and theirs != mine]
