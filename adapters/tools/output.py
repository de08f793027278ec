"""Keeping a tool's output within what goes back to the model.

The head and the tail are kept, the middle dropped: a program's errors come
last (a traceback after pages of prints), its context first.
"""

from __future__ import annotations

_TAIL_SHARE = 4  # a quarter of the limit goes to the tail


def omitted_note(omitted: int, unit: str) -> str:
    return f"\n[... output truncated: {omitted} {unit} omitted ...]\n"


def truncate_text(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail with a note between."""
    if len(text) <= limit:
        return text
    tail = limit // _TAIL_SHARE
    head = limit - tail
    return text[:head] + omitted_note(len(text) - head - tail, "characters") + (text[-tail:] if tail else "")


class OutputCapture:
    """A child's output, fed as it comes, holding at most ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an output limit must be at least 1 byte, not {limit}")
        self._tail_limit = limit // _TAIL_SHARE
        self._head_limit = limit - self._tail_limit
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data and self._tail_limit:
            self._tail += data
            del self._tail[: max(0, len(self._tail) - self._tail_limit)]

    def text(self) -> str:
        """What was captured, as text (invalid UTF-8 replaced), saying what was dropped."""
        omitted = self.total - len(self._head) - len(self._tail)
        if omitted <= 0:  # all of it: decoded whole, so a character across head and tail survives
            return (self._head + self._tail).decode("utf-8", "replace")
        return self._head.decode("utf-8", "replace") + omitted_note(omitted, "bytes") + \
            self._tail.decode("utf-8", "replace")
