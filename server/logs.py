"""The service's log lines: text for a person, or one JSON object per line for a collector.

A request's id (and its model, once known) ride in context variables that
the Generate handler sets: every line logged while it runs, in any layer,
carries them, without passing them down. Lines never carry a prompt, a
token or a key: no log call logs a request's content (tests/test_logs.py
checks this end to end).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Iterator
from typing import IO

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("llamagate_request_id", default="")
_model: contextvars.ContextVar[str] = contextvars.ContextVar("llamagate_model", default="")

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Lines logged inside (by this task, and by tasks it starts) carry ``request_id``."""
    tokens = _request_id.set(request_id), _model.set("")
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # a generator closed late, in another context: nothing to undo there
            _request_id.reset(tokens[0])
            _model.reset(tokens[1])


def set_model(model: str) -> None:
    """The model the current request went to (within its ``request_context``)."""
    _model.set(model)


class RequestContext(logging.Filter):
    """Puts the current request's id and model on each record (``""`` outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        record.model = _model.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message,
    request_id and model when known, and the exception's traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "model"):
            if value := getattr(record, key, ""):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def log_handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``log_format`` lines ("json", "text", or "auto": text
    when ``stream`` is a terminal) to ``stream`` (standard error by default)."""
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestContext())
    return handler


def configure_logging(log_format: str, *, verbose: bool) -> None:
    """The process's logging, once, at start (the command line)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[log_handler(log_format)],
                        force=True)
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
