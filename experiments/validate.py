"""Check every combination of an :class:`ExperimentConfig` before any work starts.

Strategy names and parameters go through the strategy registry, budgets through the
strategy's own ``config.check`` and ``min_passes``, task names and constructor arguments
through the task registry. With ``check_paths=True`` (what ``refinery ablate`` does) the
model directory, its ``config.json`` (does it have the next-token head the edit strategy
needs?) and task ``data_dir`` paths must exist too; shipped configs for real checkpoints
validate with ``check_paths=False`` because their model path is a placeholder.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import re
from pathlib import Path
from typing import Optional

from experiments.config import ConfigError, ExperimentConfig, StrategySpec

log = logging.getLogger(__name__)

_PARAM_IN_MESSAGE = re.compile(r"^(\w+)=")


def validate(config: ExperimentConfig, check_paths: bool = False) -> None:
    """Raise :class:`ConfigError` (file, dotted key, reason) at the first impossible setting."""
    for i, task in enumerate(config.tasks):
        _check_task(config, i, task, check_paths)
    for spec in config.strategies:
        _check_strategy(config, spec)
    if check_paths:
        model_config = _model_config(config)
        if not model_config.get("next_token_head", False):
            for spec in config.strategies:
                if needs_next_head(spec.name):
                    raise ConfigError(config.source, f"{spec.where}.name",
                                      f"strategy {spec.name!r} needs the model's next-token head, but "
                                      f"{config.model} has next_token_head=false")


def needs_next_head(name: str) -> bool:
    """Whether a registered strategy needs the ME-DLM next-token head.

    Strategies may declare ``needs_next_head = True``; the edit strategy needs it by definition."""
    from strategies.registry import strategy_class

    cls = strategy_class(name)
    return bool(getattr(cls, "needs_next_head", name == "edit"))


def _check_strategy(config: ExperimentConfig, spec: StrategySpec) -> None:
    from core.decode import parse_budget
    from strategies.registry import strategy_class
    from strategies.sampling import passes_for_budget

    src, where = config.source, spec.where
    try:
        cls = strategy_class(spec.name)
    except KeyError as e:
        raise ConfigError(src, f"{where}.name", e.args[0]) from None
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    for k, v in spec.params.items():
        key = _param_key(spec, k)
        if k not in fields:
            raise ConfigError(src, key, f"unknown parameter of strategy {spec.name!r}; known: {sorted(fields)}")
        try:
            cls.config_class.from_dict({k: v}, where=spec.name)
        except (ValueError, TypeError) as e:
            raise ConfigError(src, key, _strip_where(str(e), spec.name, k)) from None
    try:
        strategy = cls(cls.config_class.from_dict(dict(spec.params), where=spec.name))
    except (ValueError, TypeError) as e:
        raise ConfigError(src, f"{where}.params", str(e)) from None
    reason = strategy.refuse_cache(config.cache_for(spec))
    if reason is not None:
        key = f"{where}.cache" if spec.cache is not None else "cache"
        raise ConfigError(src, key, f"strategy {spec.label!r} cannot decode with cache="
                                    f"{config.cache_for(spec)!r}: {reason}")
    budget_key = f"{where}.budgets" if spec.budgets is not None else "budgets"
    need = strategy.min_passes(config.gen_length)
    for j, budget in enumerate(config.budgets_for(spec)):
        max_nfe = passes_for_budget(parse_budget(budget), config.gen_length)
        try:
            strategy.config.check(config.gen_length, max_nfe)
        except ValueError as e:
            m = _PARAM_IN_MESSAGE.match(str(e))
            key = _param_key(spec, m.group(1)) if m and m.group(1) in fields else f"{where}.params"
            raise ConfigError(src, key, f"{e} (strategy {spec.label!r}, budget {budget})") from None
        if max_nfe < need:
            raise ConfigError(src, f"{budget_key}[{j}]",
                              f"budget {budget} allows {max_nfe} forward passes for gen_length "
                              f"{config.gen_length}, but strategy {spec.label!r} needs at least {need}")


def _param_key(spec: StrategySpec, param: str) -> str:
    return f"{spec.where}.{'sweep' if param in spec.swept else 'params'}.{param}"


def _strip_where(message: str, name: str, param: str) -> str:
    """'masked: temperature: expected a number' -> 'expected a number' (the key already says where)."""
    for prefix in (f"{name}: {param}: ", f"{name}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _check_task(config: ExperimentConfig, i: int, task, check_paths: bool) -> None:
    from core.tasks import TASKS
    from strategies.registry import unknown_name_message

    where = f"tasks[{i}]"
    if task.name not in TASKS:
        raise ConfigError(config.source, f"{where}.name", unknown_name_message("task", task.name, list(TASKS)))
    params = inspect.signature(TASKS[task.name].__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = sorted(k for k in params if k != "self")
    for k in task.kwargs:
        if not takes_any and k not in params:
            raise ConfigError(config.source, f"{where}.kwargs.{k}",
                              f"task {task.name!r} takes no argument {k!r}; known: {known}")
    data_dir = task.kwargs.get("data_dir")
    if check_paths and data_dir is not None and not Path(data_dir).expanduser().exists():
        raise ConfigError(config.source, f"{where}.kwargs.data_dir", f"{data_dir}: no such file or directory")


def _model_config(config: ExperimentConfig) -> dict:
    from core.checkpoint import resolve_model_path

    try:
        path = resolve_model_path(config.model)
    except FileNotFoundError as e:
        raise ConfigError(config.source, "model", str(e)) from None
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(config.source, "model", f"{path / 'config.json'}: unreadable ({e})") from None


def validate_file(path: str | Path, check_paths: bool = False, limit: Optional[int] = None) -> ExperimentConfig:
    """load_config + validate in one call."""
    from experiments.config import load_config

    config = load_config(path).with_overrides(limit=limit)
    validate(config, check_paths=check_paths)
    return config
