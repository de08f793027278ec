"""What a model can do, read from its chat template (SPEC §3).

These are string rules over the Jinja source; what the engine reports
after launch (``ServerCapabilities``) is the cross-check applied by
``merge_server_caps``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace


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


def capabilities_from_template(template: str | None, model_id: str, *, vision: bool) -> Capabilities:
    text = template or ""
    style = _reasoning_style(text, model_id)
    always_on = style is ReasoningStyle.NONE and (  # reasoning_content: the template's own variable
        ("<think>" in text and "</think>" in text) or "reasoning_content" in text
    )
    return Capabilities(
        reasoning=style is not ReasoningStyle.NONE or always_on,
        reasoning_style=style,
        reasoning_always_on=always_on,
        preserve_thinking="preserve_thinking" in text,
        tools=any(marker in text for marker in _TOOL_MARKERS),
        vision=vision,
    )


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
