"""Rendering chat templates with jinja2, the way Hugging Face does.

The environment is HF's (``transformers``' chat template utilities): an
immutable sandbox, ``trim_blocks``/``lstrip_blocks``, loop controls, the
``{% generation %}`` tag, ``raise_exception``, ``strftime_now`` and a
``tojson`` taking ``json.dumps``' keywords. A template comes from a model
file, so it is not trusted to end: rendering is bounded in source size,
output size and time, and every failure is a ``TemplateError``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from types import FrameType
from typing import Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llamagate.domain.errors import TemplateError
from llamagate.domain.ports import TemplateValue

MAX_TEMPLATE_CHARS = 512 * 1024  # real templates are < 20 KiB; compiling is not bounded otherwise
MAX_OUTPUT_CHARS = 1024 * 1024  # a probe conversation renders to a few KiB
RENDER_SECONDS = 2.0  # a real template renders in milliseconds
_TEMPLATE_FILENAME = "<chat template>"  # marks the compiled template's frames for the time bound
_LIST_MUTATORS = frozenset({"append", "pop"})  # what llama.cpp's engine lets a template change


class _GenerationTag(Extension):
    """HF's ``{% generation %}...{% endgeneration %}`` marks the assistant's
    tokens for training masks; for rendering it is a plain block."""

    tags = {"generation"}  # noqa: RUF012 - jinja2 declares it a plain set

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """HF's immutable sandbox, with llama.cpp's list ``append``/``pop``.

    llama-server renders with its own Jinja engine, which has them (Kimi-K2's
    template appends); the values a template sees are its own copies.
    ``*`` and ``**`` can build a huge value in one step, before any time or
    output check runs: they are refused past the output bound.
    """

    intercepted_binops = frozenset({"*", "**"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, list) and attr in _LIST_MUTATORS:
            return True
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left).bit_length() * abs(right) > 4 * MAX_OUTPUT_CHARS:  # bits; a digit is ~3.3 of them
                raise TemplateError("the chat template raises a number past the output bound")
        if operator == "*":
            size, count = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(size, str | list | tuple) and isinstance(count, int) and len(size) * count > MAX_OUTPUT_CHARS:
                raise TemplateError("the chat template builds a value larger than the output bound")
        return super().call_binop(context, operator, left, right)


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys,
                      default=_json_sequence)


def _json_sequence(value: Any) -> list[Any]:
    """jinja2's ``map``/``select`` give generators where llama.cpp's give lists."""
    if isinstance(value, Iterator):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _environment() -> jinja2.Environment:
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _environment()


@lru_cache(maxsize=8)  # a load probes one template several times
def _compiled(template: str) -> jinja2.Template:
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the chat template is {len(template)} characters, over the {MAX_TEMPLATE_CHARS} allowed")
    try:
        code = _ENV.compile(template, filename=_TEMPLATE_FILENAME)
        return _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None))
    except TemplateError:
        raise
    except Exception as error:  # syntax errors, and whatever else a bad source trips
        raise TemplateError(f"the chat template does not compile: {error}") from error


class JinjaTemplateRenderer:
    """A ``TemplateRenderer``. ``bos_token``/``eos_token`` are the variables of
    those names (llama.cpp's capability probes use empty ones)."""

    def __init__(self, *, bos_token: str = "", eos_token: str = "", seconds: float = RENDER_SECONDS,
                 max_output_chars: int = MAX_OUTPUT_CHARS) -> None:
        self._tokens = {"bos_token": bos_token, "eos_token": eos_token}
        self._seconds = seconds
        self._max_output = max_output_chars

    def render(self, template: str, messages: Sequence[Mapping[str, TemplateValue]],
               tools: Sequence[Mapping[str, TemplateValue]], *, add_generation_prompt: bool,
               extra: Mapping[str, TemplateValue]) -> str:
        compiled = _compiled(template)
        variables = {**self._tokens, **_plain(extra), "messages": _plain(messages), "tools": _plain(tools),
                     "add_generation_prompt": add_generation_prompt}
        parts: list[str] = []
        size = 0
        try:
            with _deadline(time.monotonic() + self._seconds):
                for part in compiled.generate(variables):
                    size += len(part)
                    if size > self._max_output:
                        raise TemplateError(f"the chat template renders more than {self._max_output} characters")
                    parts.append(part)
        except TemplateError:
            raise
        except Exception as error:  # undefined values, type errors, recursion, ...
            raise TemplateError(f"the chat template failed: {type(error).__name__}: {error}") from error
        return "".join(parts)


def _plain(value: Any) -> Any:
    """A fresh copy in JSON's shapes (lists and dicts), as llama.cpp's engine
    sees its input: a template's ``append`` cannot reach the caller's data."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


@contextmanager
def _deadline(at: float) -> Iterator[None]:
    """Raise TemplateError in the template's own code once ``at`` has passed.

    Jinja has no loop hook, and a nest of loops can spin without output or a
    call the sandbox sees; a line tracer on the compiled template's frames
    (this thread only) is what can stop it. The previous tracer comes back.
    """

    def on_line(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if time.monotonic() > at:
            raise TemplateError("the chat template took too long to render")
        return on_line

    def on_call(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        return on_line if frame.f_code.co_filename == _TEMPLATE_FILENAME else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)
