"""Models declared in a configuration file (issue 12): what each one is, and the rules it meets.

Pure: ``adapters/config_file`` reads the TOML file; `service_config` checks
the parsed document and turns it into frozen data. Every error names the
file, the table and the key (``llamagate.toml: models[2].idle_ttl: ...``);
``models[i]`` counts the ``[[models]]`` tables from 0, as request field paths do.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar, cast

from llamagate.domain.errors import InvalidArgument
from llamagate.domain.hub import HubSource, parse_reference
from llamagate.domain.launch import check_load_options
from llamagate.domain.load_options import KvCacheType, LoadOptions, ModelMode, Pooling, Speculative

MAX_SIZE = 2**63 - 1  # bytes: what an int64 (the API's byte counts) holds
MAX_DURATION_S = 365 * 24 * 3600.0  # longer is a mistake: 0 already means "never"

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ModelSpec:
    """One declared model: where it comes from, how it is loaded, and how long it stays."""

    id: str  # what requests name; also part of its gRPC health service name
    source: str | HubSource  # a GGUF path (shard 1 of a split model), or a Hub model
    options: LoadOptions = dataclasses.field(default_factory=LoadOptions)
    pinned: bool = False  # never evicted, never unloaded for idleness
    idle_ttl_s: float = 0.0  # unloaded after this long unused; 0 = never
    on_demand: bool = True  # a request naming it may load it
    load_at_start: bool = False

    def __post_init__(self) -> None:
        # Fields are named as the file's keys, so service_config only prefixes the table.
        check_model_id(self.id)
        if isinstance(self.source, str) and (not self.source or "\0" in self.source):
            raise InvalidArgument("a model path must be a non-empty file name without NUL characters", field="path")
        _check_options(self.options)
        _check_duration(self.idle_ttl_s, field="idle_ttl")
        if self.pinned and self.idle_ttl_s > 0:
            raise InvalidArgument(
                f"{format_duration(self.idle_ttl_s)} contradicts pinned = true: a pinned model is never unloaded;"
                " drop one of the two",
                field="idle_ttl",
            )


@dataclass(frozen=True)
class ServiceConfig:
    models: tuple[ModelSpec, ...]
    host_memory_bytes: int = 0  # the host memory the models share without GPUs; 0 = what the machine has
    default_model: str = ""  # where a request naming no model goes when several are loaded; "" = nowhere

    def __post_init__(self) -> None:
        if not 0 <= self.host_memory_bytes <= MAX_SIZE:
            raise InvalidArgument(f"must be 0 (what the machine has) up to {MAX_SIZE}, got {self.host_memory_bytes}",
                                  field="host_memory")
        seen: dict[str, int] = {}
        for i, spec in enumerate(self.models):
            # Ignoring case: "Chat" next to "chat" is a typo waiting to route a request wrong.
            first = seen.setdefault(spec.id.lower(), i)
            if first != i:
                other = self.models[first].id
                spelled = f" ({other!r})" if other != spec.id else ""
                raise InvalidArgument(f"{spec.id!r} is already the id of models[{first}]{spelled};"
                                      " ids must differ, ignoring case", field=f"models[{i}].id")
        ids = [spec.id for spec in self.models]
        if self.default_model and self.default_model not in ids:
            raise InvalidArgument(f"{self.default_model!r} names no declared model;"
                                  f" {_one_of(self.default_model, ids, 'the ids are')}", field="default_model")


def check_model_id(model: str) -> None:
    """1-64 of letters, digits, '.', '_', '-', starting with a letter or digit."""
    if not _ID.fullmatch(model):
        raise InvalidArgument(f"{_show(model)} is not a model id: 1-64 of letters, digits, '.', '_', '-',"
                              " starting with a letter or digit", field="id")


def _check_options(options: LoadOptions) -> None:
    """The Load RPC's rules (`check_load_options`: ranges, pooling only for
    embeddings), the error named by the first key that breaks them on its own
    among default options, else by the table."""
    try:
        check_load_options(options)
    except InvalidArgument as error:
        for name, key in _OPTION_KEYS.items():
            try:
                check_load_options(dataclasses.replace(LoadOptions(), **{name: getattr(options, name)}))
            except InvalidArgument:
                # the whole options' message: it speaks of this model's other keys (its mode), not the defaults
                raise InvalidArgument(error.description, field=key) from error
        raise InvalidArgument(error.description) from error


# ---------------------------------------------------------------- sizes and durations

_SIZE_UNITS = {  # as format_size writes them
    "B": 1,
    **{f"{p}B": 1000**n for n, p in enumerate(["k", "M", "G", "T", "P"], 1)},
    **{f"{p}iB": 1024**n for n, p in enumerate("KMGTP", 1)},
}
_SIZE_FACTORS = {unit.lower(): factor for unit, factor in _SIZE_UNITS.items()}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*", re.ASCII)
_SIZE_FORMS = ("an integer of bytes, or a number and a unit: B, kB, MB, GB, TB, PB (powers of 1000)"
               " or KiB, MiB, GiB, TiB, PiB (powers of 1024), such as \"12GiB\" or \"1.5GB\"")


def parse_size(value: int | str) -> int:
    """Bytes from an integer or a string such as ``"512MiB"``, ``"1.5GB"`` (unit case ignored;
    a fraction of a byte is dropped)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgument(f"a size is {_SIZE_FORMS}; got {_kind(value)}")
    if isinstance(value, int):
        amount = value
    else:
        match = _SIZE.fullmatch(value)
        factor = _SIZE_FACTORS.get(match[2].lower()) if match else None
        if match is None or factor is None:
            raise InvalidArgument(f"{_show(value)} is not a size: write {_SIZE_FORMS}")
        amount = int(Decimal(match[1]) * factor)
    if amount < 0:
        raise InvalidArgument(f"{_show(value)} is negative: a size is 0 or more bytes")
    if amount > MAX_SIZE:
        raise InvalidArgument(f"{_show(value)} is larger than the largest size, {MAX_SIZE} bytes (8 EiB)")
    return amount


def format_size(size: int) -> str:
    """The shortest exact spelling `parse_size` reads back: ``12GiB``, ``1500MB``, ``1000001B``."""
    if size < 0:
        raise ValueError(f"a size is never negative: {size}")
    amount, unit = min((size // f, u) for u, f in _SIZE_UNITS.items() if size % f == 0) if size else (0, "B")
    return f"{amount}{unit}"


_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"\s*(?:{_NUMBER}h)?\s*(?:{_NUMBER}m)?\s*(?:{_NUMBER}s)?\s*", re.ASCII)
_DURATION_FORMS = ("a number of seconds, or hours, minutes and seconds in that order, lowercase,"
                   " such as \"90s\", \"10m\", \"2h\", \"1h30m\"")


def parse_duration(value: float | str) -> float:
    """Seconds from a number or a string of ``h``, ``m``, ``s`` parts in that order (lowercase:
    ``M`` could be read as months)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidArgument(f"a duration is {_DURATION_FORMS}; got {_kind(value)}")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None or not any(match.groups()):
            raise InvalidArgument(f"{_show(value)} is not a duration: write {_DURATION_FORMS}")
        h, m, s = (Decimal(part or 0) for part in match.groups())
        seconds = float(h * 3600 + m * 60 + s)
    else:
        seconds = float(value)
    _check_duration(seconds)
    return seconds


def _check_duration(seconds: float, *, field: str = "") -> None:
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION_S):
        raise InvalidArgument(f"a duration must be 0 (never) up to {format_duration(MAX_DURATION_S)} (365 days),"
                              f" got {seconds!r} seconds", field=field)


def format_duration(seconds: float) -> str:
    """``1h30m``, ``90.5s`` → ``1m30.5s``; exact: `parse_duration` reads back the same float."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a duration is finite and never negative: {seconds}")
    hours, rest = divmod(Decimal(repr(float(seconds))), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{int(hours)}h" if hours else "", f"{int(minutes)}m" if minutes else "",
             f"{secs.normalize():f}s" if secs or not (hours or minutes) else ""]
    return "".join(parts)


# ---------------------------------------------------------------- the document

_TOP_KEYS = ("host_memory", "default_model", "models")
_OPTION_KEYS = {  # LoadOptions field → the file's key
    "context_length": "context_length", "parallel": "parallel", "cache_type": "cache_type", "threads": "threads",
    "chat_template": "chat_template", "speculative": "speculative", "mmproj_path": "mmproj",
    "batch_size": "batch_size", "mode": "mode", "pooling": "pooling", "rpc_workers": "rpc_workers",
}
_MODEL_KEYS = ("id", "path", "hub", "revision", *_OPTION_KEYS.values(),
               "pinned", "idle_ttl", "on_demand", "load_at_start")
_NO_TOKEN = ("Hub tokens are never read from the config file, which is easily shared or committed;"
             " set HF_TOKEN in the service's environment, or log in with `hf auth login`")


def service_config(data: Mapping[str, object], *, origin: str) -> ServiceConfig:
    """The service's configuration from a parsed TOML document; ``origin`` (the file) starts every error.

    Paths are kept as written: resolving relative ones is the reader's job.
    """
    try:
        return _service_config(data)
    except InvalidArgument as error:
        raise InvalidArgument(f"{origin}: {error}" if origin else str(error)) from error


def _service_config(data: Mapping[str, object]) -> ServiceConfig:
    _known_keys(data, _TOP_KEYS, where="", table="the top level")
    tables = data.get("models", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InvalidArgument("must be an array of tables: start each model with [[models]] (two brackets)",
                              field="models")
    return ServiceConfig(
        models=tuple(_model(table, f"models[{i}]") for i, table in enumerate(tables)),
        host_memory_bytes=_field("host_memory", parse_size, cast("int | str", data.get("host_memory", 0))),
        default_model=_get(data, "default_model", str, ""),
    )


def _model(table: Mapping[str, object], where: str) -> ModelSpec:
    _known_keys(table, _MODEL_KEYS, where=where, table="[[models]]")
    try:
        if "id" not in table:
            raise InvalidArgument("every model needs an id, the name requests use", field="id")
        options = LoadOptions(
            context_length=_get(table, "context_length", int, 0),
            parallel=_get(table, "parallel", int, 1),
            cache_type=_choice(table, "cache_type", KvCacheType, KvCacheType.F16),
            threads=_get(table, "threads", int, 0),
            chat_template=_get(table, "chat_template", str, ""),
            speculative=_choice(table, "speculative", Speculative, Speculative.OFF),
            mmproj_path=_path(table, "mmproj"),
            batch_size=_get(table, "batch_size", int, 0),
            mode=_choice(table, "mode", ModelMode, ModelMode.CHAT),
            pooling=_choice(table, "pooling", Pooling, Pooling.DEFAULT),
            rpc_workers=_strings(table, "rpc_workers"),
        )
        return ModelSpec(
            id=_get(table, "id", str, ""),
            source=_source(table),
            options=options,
            pinned=_get(table, "pinned", bool, False),
            idle_ttl_s=_field("idle_ttl", parse_duration, cast("float | str", table.get("idle_ttl", 0))),
            on_demand=_get(table, "on_demand", bool, True),
            load_at_start=_get(table, "load_at_start", bool, False),
        )
    except InvalidArgument as error:
        raise InvalidArgument(error.description, field=f"{where}.{error.field}" if error.field else where) from error


def _source(table: Mapping[str, object]) -> str | HubSource:
    if ("path" in table) == ("hub" in table):
        raise InvalidArgument(
            "both path and hub are set: a model comes from one of them" if "path" in table
            else "needs path = \"/models/x.gguf\" (a GGUF file) or hub = \"owner/name:VARIANT\" (the Hub)")
    if "path" in table:
        if "revision" in table:
            raise InvalidArgument("applies to hub models only, not to a path", field="revision")
        return _path(table, "path")
    reference = _get(table, "hub", str, "")
    try:
        source = parse_reference(reference, field="hub")
    except InvalidArgument as error:
        cause = error.__cause__
        detail = cause.description if isinstance(cause, InvalidArgument) else error.description
        raise InvalidArgument(detail, field="hub") from error
    try:
        return dataclasses.replace(source, revision=_get(table, "revision", str, ""))
    except InvalidArgument as error:
        raise InvalidArgument(error.description, field="revision") from error


def _path(table: Mapping[str, object], key: str) -> str:
    path = _get(table, key, str, "")
    if key in table and not path:
        raise InvalidArgument("is empty: name a file, or leave the key out", field=key)
    return path


# ---------------------------------------------------------------- typed reads

T = TypeVar("T")
V = TypeVar("V")
R = TypeVar("R")
E = TypeVar("E", bound=enum.Enum)

_TOML_TYPES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
               list: "an array", dict: "a table"}


def _get(table: Mapping[str, object], key: str, kinds: type[T] | tuple[type, ...], default: T) -> T:
    """``table[key]`` when it has one of ``kinds`` (a boolean is no integer here), else ``default``."""
    if key not in table:
        return default
    value = table[key]
    wanted = kinds if isinstance(kinds, tuple) else (kinds,)
    if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
        expected = " or ".join(_TOML_TYPES[k] for k in wanted)
        raise InvalidArgument(f"must be {expected}, got {_kind(value)}", field=key)
    return value  # type: ignore[return-value]  # checked against kinds just above


def _strings(table: Mapping[str, object], key: str) -> tuple[str, ...]:
    """An array of strings (``rpc_workers = ["10.0.0.2:50052"]``)."""
    values = _get(table, key, list, [])
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidArgument(f"must be a string, got {_kind(value)}", field=f"{key}[{i}]")
    return tuple(values)


def _choice(table: Mapping[str, object], key: str, kind: type[E], default: E) -> E:
    text = _get(table, key, str, default.value)
    for member in kind:
        if member.value == text.lower():
            return member
    raise InvalidArgument(f"{_show(text)} is not one of {', '.join(m.value for m in kind)}", field=key)


def _field(key: str, parse: Callable[[V], R], value: V) -> R:
    """``parse(value)``, its error attributed to ``key``. The parsers check the
    type themselves (the value is cast to what they take), so their messages
    can say which forms they read."""
    try:
        return parse(value)
    except InvalidArgument as error:
        raise InvalidArgument(error.description, field=key) from error


def _known_keys(data: Mapping[str, object], known: tuple[str, ...], *, where: str, table: str) -> None:
    for key in data:
        if key in known:
            continue
        field = f"{where}.{key}" if where else key
        if key == "token":
            raise InvalidArgument(_NO_TOKEN, field=field)
        close = _closest(key, known)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise InvalidArgument(f"unknown key{hint}; the keys of {table} are {', '.join(known)}", field=field)


def _one_of(text: str, names: list[str], intro: str) -> str:
    listing = f"{intro} {', '.join(names)}" if names else "no model is declared"
    close = _closest(text, names)
    return f"did you mean {close!r}? {listing}" if close else listing


def _closest(text: str, names: tuple[str, ...] | list[str]) -> str:
    """The name ``text`` most likely misspells, ignoring case; "" when none is close."""
    lowered = {name.lower(): name for name in names}
    close = difflib.get_close_matches(text.lower(), lowered, n=1)
    return lowered[close[0]] if close else ""


def _kind(value: object) -> str:
    name = next((n for t, n in _TOML_TYPES.items() if isinstance(value, t)), "a date or time")
    return f"{name} ({_show(value)})"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
