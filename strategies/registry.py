"""The strategy registry: ``@register("name")`` on each strategy class, ``get_strategy(name, **params)``."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strategies.base import Strategy

_REGISTRY: dict[str, type["Strategy"]] = {}


def register(name: str):
    """Class decorator: make a strategy available under ``name`` (= its file name = its test file name)."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"strategy {name!r} registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """"Unknown strategy 'x'. Did you mean ...? Available: ..." (shared by every registry of refinery)."""
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(available))}"


def strategy_class(name: str) -> type["Strategy"]:
    import strategies  # noqa: F401  (importing the package registers every strategy)

    if name not in _REGISTRY:
        raise KeyError(unknown_name_message("strategy", name, list(_REGISTRY)))
    return _REGISTRY[name]


def preset_params(name: str, preset: str | None) -> dict[str, Any]:
    """The parameter dict of ``preset`` of strategy ``name`` ({} for None)."""
    if preset is None:
        return {}
    cls = strategy_class(name)
    if preset not in cls.presets:
        raise KeyError(f"strategy {name!r}: " + unknown_name_message("preset", preset, list(cls.presets)))
    return dict(cls.presets[preset].params)


def get_strategy(name: str, preset: str | None = None, **params: Any) -> "Strategy":
    """Build a registered strategy from an optional named preset plus keyword parameters that override it
    (validated together by its config dataclass)."""
    cls = strategy_class(name)
    where = f"strategy {name!r}" + (f" preset {preset!r}" if preset else "")
    return cls(cls.config_class.from_dict({**preset_params(name, preset), **params}, where=where))


def available_strategies() -> dict[str, type["Strategy"]]:
    import strategies  # noqa: F401

    return dict(sorted(_REGISTRY.items()))
