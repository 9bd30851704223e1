"""The one path from YAML (or any plain dict) to a frozen, typed dataclass config.

    @dataclass(frozen=True)
    class Knobs:
        eta: float = field(default=0.04, metadata={"range": (0, 1)})  # remasking strength
        top_p: float = ranged(1.0, 0, 1, open="lo")  # the same, shorter: (0, 1]
        device: str = field(default="cpu", metadata={"choices": ("cpu", "cuda")})

    knobs = build(Knobs, {"eta": 0.1}, where="x.yaml", at="strategies[0].params")

Strategy, experiment and training configs and the app's forms all go through here, so one set of rules
turns YAML values into field values:

* ``bool``: true/false only; ``int``: integers only (not true/false, not 1.0); ``float``: any number,
  stored as float; ``str``: text (a path object given from code becomes its text); ``Any``: as given.
* ``Optional[X]``: None or X; ``Literal[...]``: one of the listed values.
* ``tuple``/``list``: a YAML list, items coerced for ``tuple[X, ...]`` (or ``tuple[X, Y]``, fixed length).
* ``dict``/``Mapping``: a mapping; a nested dataclass: a mapping built by these same rules.
* Field metadata:
  ``range`` (lo, hi) with None for an open side, both ends included unless ``open`` is "lo", "hi" or "both"
  (for a tuple field every item must lie in it); ``choices`` the allowed values (``noun`` names them in the
  message); ``min_len`` the fewest items of a list; ``parse`` fn(value, key, where) -> value for a field
  whose YAML form needs more than coercion (it raises :class:`ConfigError` itself); ``internal`` marks a
  field the caller sets (not a key of the file).

Every mistake raises :class:`core.errors.ConfigError` naming where (the file), the dotted key and the
reason: ``x.yaml: strategies[0].params.eta: must lie in [0, 1], got 1.5``. Unknown keys suggest the
closest known ones. Ranges are checked on the built object, so defaults and preset values obey them too.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Optional, TypeVar

from refinery.core.errors import ConfigError
from refinery.core.registry import suggest

T = TypeVar("T")

# Names a config may give for a torch dtype -> the torch attribute (None: the checkpoint's own dtype).
# Kept here, free of torch, so configs check them without importing it (core.checkpoint.parse_dtype maps them).
DTYPE_NAMES: dict[Optional[str], Optional[str]] = {
    None: None, "auto": None, "fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16"}


def ranged(default: Any, lo: Any = None, hi: Any = None, open: str = "") -> Any:
    """A dataclass field with a default and a range: ``eta: float = ranged(0.04, 0, 1)`` is
    ``field(default=0.04, metadata={"range": (0, 1)})``; ``open`` "lo"/"hi"/"both" excludes ends."""
    meta: dict[str, Any] = {"range": (lo, hi)}
    if open:
        meta["open"] = open
    return dataclasses.field(default=default, metadata=meta)


def build(cls: type[T], data: Any, where: str = "config", at: str = "", noun: str = "key",
          **internal: Any) -> T:
    """Plain mapping -> checked frozen ``cls``. ``at`` is the dotted key of the mapping inside the file
    ("" at the top), ``noun`` what a key is called in messages ("parameter"), ``internal`` the values of
    fields marked ``internal`` (never read from ``data``)."""
    obj = _build(cls, data, where, at, noun, internal)
    check_fields(obj, where, at)
    return obj


def _build(cls: type[T], data: Any, where: str, at: str, noun: str, internal: dict) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(where, at, f"expected a mapping, got {type(data).__name__}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = [f.name for f in fields if not f.metadata.get("internal")]
    for key in data:
        if key not in known:
            raise ConfigError(where, _join(at, key), f"unknown {noun}.{suggest(key, known)} "
                                                     f"Known {noun}s: {sorted(known)}")
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in data and f.name not in internal:
            raise ConfigError(where, _join(at, f.name), f"required {noun} is missing")
    hints = type_hints(cls)
    by_name = {f.name: f for f in fields}
    values = dict(internal)
    for key, value in data.items():
        f, key_at = by_name[key], _join(at, key)
        parse = f.metadata.get("parse")
        values[key] = parse(value, key_at, where) if parse else coerce(value, hints[key], where, key_at)
    return cls(**values)


def coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """One YAML value -> the value of a field typed ``hint`` (see the module docstring), or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where, key)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(where, key, f"{value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, key, "key", {})
    if hint is tuple or hint is list or origin in (tuple, list):
        return _coerce_sequence(value, hint, origin, args, where, key)
    if hint is dict or origin in (dict, Mapping) or hint is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(where, key, f"expected a mapping, got {value!r}")
        return dict(value)
    scalar = _SCALARS.get(hint)
    return scalar(value, where, key) if scalar else value


def _coerce_union(value: Any, args: tuple, where: str, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    rest = [a for a in args if a is not type(None)]
    errors = []
    for hint in rest:
        try:
            return coerce(value, hint, where, key)
        except ConfigError as e:
            errors.append(e.reason)
    raise ConfigError(where, key, errors[0] if len(errors) == 1 else " or ".join(errors))


def _coerce_sequence(value: Any, hint: Any, origin: Any, args: tuple, where: str, key: str) -> Any:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(where, key, f"expected a list, got {value!r}")
    make = list if (hint is list or origin is list) else tuple
    if not args:
        return make(value)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigError(where, key, f"expected {len(args)} items, got {list(value)!r}")
        return make(coerce(v, a, where, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    return make(coerce(v, args[0], where, f"{key}[{i}]") for i, v in enumerate(value))


def _bool(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, key, f"expected true or false, got {value!r}")
    return value


def _int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, key, f"expected an integer, got {value!r}")
    return value


def _float(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(where, key, f"expected a number, got {value!r}")
    return float(value)


def _str(value: Any, where: str, key: str) -> str:
    if isinstance(value, os.PathLike):  # a pathlib.Path handed in from code
        return os.fspath(value)
    if not isinstance(value, str):
        raise ConfigError(where, key, f"expected text, got {value!r}")
    return value


_SCALARS = {bool: _bool, int: _int, float: _float, str: _str}


def check_fields(obj: Any, where: str = "config", at: str = "") -> None:
    """Check the metadata (range, choices, min_len) of every field of the dataclass ``obj``, nested
    dataclasses included; the first violation raises ConfigError naming ``where`` and the dotted key."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), _join(at, f.name)
        reason = check_value(value, f.metadata)
        if reason is not None:
            raise ConfigError(where, key, reason)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, where, key)
        elif isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_fields(item, where, f"{key}[{i}]")


def check_value(value: Any, meta: Mapping) -> Optional[str]:
    """Why ``value`` breaks the field metadata ``meta``, or None when it obeys it (None values always do)."""
    if value is None:
        return None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        allowed = [c for c in choices if c is not None]
        noun = meta.get("noun")
        return (f"{value!r} is not a {noun}; choose one of {allowed}" if noun
                else f"{value!r} is not one of {allowed}")
    min_len = meta.get("min_len")
    if min_len is not None and len(value) < min_len:
        return (f"expected a non-empty list, got {list(value)!r}" if min_len == 1
                else f"expected at least {min_len} items, got {list(value)!r}")
    bounds = meta.get("range")
    if bounds is not None:
        items = value if isinstance(value, (tuple, list)) else (value,)
        if not all(_inside(v, bounds, meta.get("open", "")) for v in items):
            every = "every item " if isinstance(value, (tuple, list)) else ""
            shown = list(value) if isinstance(value, (tuple, list)) else value
            return f"{every}must {describe_range(bounds, meta.get('open', ''))}, got {shown!r}"
    return None


def _inside(v: Any, bounds: tuple, open_: str) -> bool:
    lo, hi = bounds
    lo_open, hi_open = open_ in ("lo", "both"), open_ in ("hi", "both")
    return ((lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi)))


def describe_range(bounds: tuple, open_: str = "") -> str:
    """(0, 1) -> "lie in [0, 1]"; (1, None) -> "be >= 1"; (0, None) with open "lo" -> "be > 0"."""
    lo, hi = bounds
    lo_open, hi_open = open_ in ("lo", "both"), open_ in ("hi", "both")
    if hi is None:
        return f"be {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f"be {'<' if hi_open else '<='} {hi}"
    return f"lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


@functools.lru_cache(maxsize=None)
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of ``cls`` (string annotations evaluated)."""
    return typing.get_type_hints(cls)


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> (X, True); any other hint -> (hint, False)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def field_choices(f: dataclasses.Field, hint: Any) -> Optional[tuple]:
    """The values a field accepts when they form a closed set (``Literal`` or ``choices``), else None."""
    hint, _ = unwrap_optional(hint)
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    choices = f.metadata.get("choices")
    return tuple(c for c in choices if c is not None) if choices is not None else None


def _join(at: str, key: Any) -> str:
    return f"{at}.{key}" if at else str(key)
