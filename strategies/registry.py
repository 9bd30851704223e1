"""The strategy registry: ``@register("name")`` on each strategy class, ``get_strategy(name, **params)``.

A :class:`core.registry.Registry` of :class:`strategies.base.Strategy` subclasses; importing the
``strategies`` package registers the built-in ones. ``register(name, "pkg.module:Class")`` adds a lazy one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from refinery.core.registry import Registry, unknown_name_message

if TYPE_CHECKING:
    from refinery.strategies.base import Strategy

STRATEGIES: Registry["Strategy"] = Registry("strategy", base="refinery.strategies.base:Strategy",
                                             populate="refinery.strategies")
# README "Add a strategy": registered lazily, imported on first use
STRATEGIES.register("dream", "refinery.strategies.dream:DreamStrategy")


def register(name: str, target: Optional[str] = None):
    """Class decorator: make a strategy available under ``name`` (= its file name = its test file name);
    ``register(name, "pkg.module:Class")`` registers a class imported on first use."""
    return STRATEGIES.register(name, target)


def strategy_class(name: str) -> type["Strategy"]:
    return STRATEGIES.get(name)


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
    return STRATEGIES.as_dict()
