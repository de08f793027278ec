"""The service's configuration file (TOML, issue 12): read, checked, paths made absolute.

The rules are ``domain/model_config``'s; this module owns the file: reading
it, TOML's syntax errors, and where relative paths point.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib

from llamagate.domain.errors import InvalidArgument
from llamagate.domain.model_config import ModelSpec, ServiceConfig, service_config

MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB; this refuses a wrong path such as a model file or /dev/zero

_AT = re.compile(r"(?P<what>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)", re.DOTALL)


def read_service_config(path: str) -> ServiceConfig:
    """The configuration ``path`` declares; every problem is InvalidArgument starting with ``path``.

    Relative model and projector paths are taken from the config file's
    directory (not the working directory, which depends on who starts the
    service), after ``~`` is expanded.
    """
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidArgument(f"{path}: {_syntax(str(error))}") from error
    config = service_config(data, origin=path)
    base = os.path.dirname(os.path.abspath(path))
    return dataclasses.replace(config, models=tuple(_resolved(spec, base) for spec in config.models))


def _read(path: str) -> str:
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as error:
        raise InvalidArgument(f"{path}: no such config file") from error
    except IsADirectoryError as error:
        raise InvalidArgument(f"{path}: is a directory, not a config file") from error
    except OSError as error:
        raise InvalidArgument(f"{path}: cannot read the config file: {error.strerror or error}") from error
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; is it really the config file?")
    try:
        return raw.decode("utf-8-sig")  # an editor's byte-order mark is no error
    except UnicodeDecodeError as error:
        raise InvalidArgument(f"{path}: not UTF-8 text (byte {error.start}); TOML files are UTF-8") from error


def _syntax(message: str) -> str:
    """tomllib's "Invalid value (at line 3, column 9)" as "line 3, column 9: TOML syntax error: Invalid value"."""
    at = _AT.fullmatch(message)
    if at:
        return f"line {at['line']}, column {at['column']}: TOML syntax error: {at['what']}"
    return f"TOML syntax error: {message}"  # "(at end of document)" and the like stay as tomllib says


def _resolved(spec: ModelSpec, base: str) -> ModelSpec:
    source = _absolute(spec.source, base) if isinstance(spec.source, str) else spec.source
    mmproj = _absolute(spec.options.mmproj_path, base) if spec.options.mmproj_path else ""
    return dataclasses.replace(spec, source=source, options=dataclasses.replace(spec.options, mmproj_path=mmproj))


def _absolute(path: str, base: str) -> str:
    return os.path.join(base, os.path.expanduser(path))  # join keeps an absolute path as it is
