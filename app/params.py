"""Strategy parameter forms, derived from each strategy's frozen config dataclass.

Every registered strategy gets one input per config field (a dropdown for ``Literal`` choices, a checkbox
for ``bool``, a number for ``int``/``float``, a JSON text box for anything else, blank meaning ``None``).
Values that equal the field's default are left out, so the strategy's own ``from_dict`` validates
only what the user changed and column labels stay short.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class FieldSpec:
    """One form input: which strategy and field it sets, and how its widget is built."""

    strategy: str
    name: str
    widget: str  # "choice" | "bool" | "int" | "float" | "json"
    default: Any
    choices: tuple = ()


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def field_specs(strategy_name: str, config_class: type) -> list[FieldSpec]:
    """The form inputs of one strategy's config dataclass."""
    hints = typing.get_type_hints(config_class)
    specs = []
    for f in dataclasses.fields(config_class):
        default = f.default if f.default is not dataclasses.MISSING else None
        hint, optional = _unwrap_optional(hints[f.name])
        if typing.get_origin(hint) is typing.Literal:
            specs.append(FieldSpec(strategy_name, f.name, "choice", default, typing.get_args(hint)))
        elif hint is bool and not optional:
            specs.append(FieldSpec(strategy_name, f.name, "bool", default))
        elif hint in (int, float) and not optional:
            specs.append(FieldSpec(strategy_name, f.name, hint.__name__, default))
        else:
            specs.append(FieldSpec(strategy_name, f.name, "json", default))
    return specs


def widget_value(spec: FieldSpec) -> Any:
    """The initial value shown by the widget of ``spec``."""
    if spec.widget == "json":
        return "" if spec.default is None else json.dumps(spec.default)
    return spec.default


def parse_value(spec: FieldSpec, raw: Any) -> Any:
    """Widget value -> config value. Raises ValueError naming the strategy and field."""
    where = f"strategy {spec.strategy!r}, parameter {spec.name!r}"
    if spec.widget == "json":
        text = "" if raw is None else str(raw).strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: {text!r} is not valid JSON (blank means none)") from None
    if spec.widget == "int":
        if raw is None or float(raw) != int(float(raw)):
            raise ValueError(f"{where}: expected an integer, got {raw!r}")
        return int(float(raw))
    if spec.widget == "float":
        if raw is None:
            raise ValueError(f"{where}: expected a number")
        return float(raw)
    return raw


def changed_params(specs: Sequence[FieldSpec], values: Sequence[Any], strategy: str) -> dict[str, Any]:
    """The parameters of ``strategy`` whose widget values differ from the config defaults."""
    if len(specs) != len(values):
        raise ValueError(f"got {len(values)} parameter values for {len(specs)} fields")
    out = {}
    for spec, raw in zip(specs, values):
        if spec.strategy != strategy:
            continue
        value = parse_value(spec, raw)
        default = tuple(spec.default) if isinstance(spec.default, list) else spec.default
        if (tuple(value) if isinstance(value, list) else value) != default:
            out[spec.name] = value
    return out


def short_label(name: str, params: dict[str, Any]) -> str:
    """'threshold (threshold=0.8)': the column title of one strategy run."""
    if not params:
        return name
    return f"{name} (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
