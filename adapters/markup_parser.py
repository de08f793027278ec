"""The tool-call markup healer port, on the Rust streaming parser (rust_ext).

Turns the parser's event tuples into domain events; the parser's own
error (a cap exceeded) becomes ReplyUnparsable.
"""

from __future__ import annotations

from collections.abc import Callable

from llamagate.domain.chat import CallEnded, ContentDelta, MarkupEvent, ReasoningDelta, ToolCallDelta
from llamagate.domain.errors import ReplyUnparsable
from llamagate.rust_ext import ToolCallParseError, ToolCallParser


class RustMarkupParser:
    def __init__(self, id_prefix: str = "call_") -> None:
        self._parser = ToolCallParser(id_prefix=id_prefix)

    def feed(self, text: str) -> list[MarkupEvent]:
        return _events(lambda: self._parser.feed(text))

    def finish(self) -> list[MarkupEvent]:
        return _events(self._parser.finish)


def _events(parse: Callable[[], list[tuple]]) -> list[MarkupEvent]:
    try:
        return [_event(e) for e in parse()]
    except ToolCallParseError as error:
        raise ReplyUnparsable(f"the reply's tool-call markup is beyond what the service parses: {error}") from None


def _event(event: tuple) -> MarkupEvent:
    kind = event[0]
    if kind == "text":
        return ContentDelta(event[1])
    if kind == "reasoning":
        return ReasoningDelta(event[1])
    if kind == "start":
        return ToolCallDelta(event[1], id=event[2], name=event[3])
    if kind == "args":
        return ToolCallDelta(event[1], arguments=event[2])
    return CallEnded(event[1], event[2])
