"""Strategy parameter forms, derived from each strategy's frozen config dataclass.

Every registered strategy gets one input per config field (a dropdown for ``Literal`` choices, a checkbox
for ``bool``, a number for ``int``/``float``, a JSON text box for anything else, blank meaning ``None``).
Values that equal the field's default are left out, so the strategy's own ``from_dict`` validates
only what the user changed and column labels stay short. Types, choices and ranges come from the config's
field declarations through :mod:`core.typed`, the same rules a YAML file meets.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from refinery.core.typed import check_value, coerce, field_choices, type_hints, unwrap_optional


@dataclass(frozen=True)
class FieldSpec:
    """One form input: which strategy and field it sets, and how its widget is built."""

    strategy: str
    name: str
    widget: str  # "choice" | "bool" | "int" | "float" | "json"
    default: Any
    choices: tuple = ()
    metadata: Mapping = field(default_factory=dict, compare=False)  # the config field's range / choices
    hint: Any = field(default=Any, compare=False)  # the config field's type (core.typed coerces to it)


def field_specs(strategy_name: str, config_class: type) -> list[FieldSpec]:
    """The form inputs of one strategy's config dataclass."""
    hints = type_hints(config_class)
    specs = []
    for f in dataclasses.fields(config_class):
        default = f.default if f.default is not dataclasses.MISSING else None
        hint, optional = unwrap_optional(hints[f.name])
        choices = field_choices(f, hints[f.name])
        if choices is not None:
            widget = "choice"
        elif hint is bool and not optional:
            widget = "bool"
        elif hint in (int, float) and not optional:
            widget = hint.__name__
        else:
            widget = "json"
        specs.append(FieldSpec(strategy_name, f.name, widget, default, choices or (), dict(f.metadata),
                               hints[f.name]))
    return specs


def widget_value(spec: FieldSpec) -> Any:
    """The initial value shown by the widget of ``spec``."""
    if spec.widget == "json":
        return "" if spec.default is None else json.dumps(spec.default)
    return spec.default


def parse_value(spec: FieldSpec, raw: Any) -> Any:
    """Widget value -> config value, checked against the field's range and choices. Raises ValueError
    naming the strategy and field."""
    where = f"strategy {spec.strategy!r}, parameter {spec.name!r}"
    value = _widget_to_value(spec, raw, where)
    if value is not None:  # JSON boxes can hold any type: the config's own coercion names the mistake
        value = coerce(value, spec.hint, f"strategy {spec.strategy!r}", spec.name)
    reason = check_value(value, spec.metadata)
    if reason is not None:
        raise ValueError(f"{where}: {reason}")
    return value


def _widget_to_value(spec: FieldSpec, raw: Any, where: str) -> Any:
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
