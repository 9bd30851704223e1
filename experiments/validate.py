"""Check every combination of an :class:`ExperimentConfig` before any work starts.

Strategy names and parameters go through the strategy registry, budgets through the
strategy's own ``config.check`` and ``min_passes``, task names and constructor arguments
through the task registry. With ``check_paths=True`` (what ``refinery ablate`` and its
``--validate-only`` do) the machine and the files must be there too, all without loading a
tensor: the device (CUDA available, the index exists), the checkpoint (``config.json`` parses
and has the model's fields; every safetensors header is readable and its data ends at the
end of the file; the next-token head the edit strategy needs, of
each entry's own ``model``), the tokenizer directory, and
each task's data (the split's file under ``data_dir``; a benchmark without ``data_dir`` needs
``from_hub: true``). Shipped configs for real checkpoints validate with ``check_paths=False``
because their model path is a placeholder.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
from pathlib import Path
from typing import Optional

from refinery.experiments.config import ConfigError, ExperimentConfig, StrategySpec

log = logging.getLogger(__name__)

_PARAM_IN_MESSAGE = re.compile(r"^(\w+)=")


def validate(config: ExperimentConfig, check_paths: bool = False) -> None:
    """Raise :class:`ConfigError` (file, dotted key, reason) at the first impossible setting."""
    for i, task in enumerate(config.tasks):
        _check_task(config, i, task, check_paths)
    for spec in config.strategies:
        _check_strategy(config, spec)
    if check_paths:
        _check_device(config)
        model_configs = {}
        for model in config.models():  # each checkpoint once, named by the key that chose it
            key = _model_key(config, model)
            model_configs[model] = _model_config(config, model, key)
            _check_tokenizer(config, model, key)
        _check_model_fits(config, model_configs)


def _model_key(config: ExperimentConfig, model: str) -> str:
    """The dotted key that names ``model``: ``model`` for the file's, else the first entry naming it."""
    if model == config.model:
        return "model"
    return next(f"{s.where}.model" for s in config.strategies if config.model_for(s) == model)


def _check_model_fits(config: ExperimentConfig, model_configs: dict[str, dict]) -> None:
    """What the strategies and lengths ask of each entry's checkpoint: room for a prompt, the edit heads."""
    from refinery.strategies.registry import strategy_class

    for model, model_config in model_configs.items():
        limit = model_config.get("max_sequence_length")
        if isinstance(limit, int) and config.gen_length >= limit:  # no room left for any prompt
            raise ConfigError(config.source, "gen_length", f"{config.gen_length} leaves no room for a prompt: "
                                                           f"{model}'s max_sequence_length is {limit}")
    for spec in config.strategies:
        model = config.model_for(spec)
        model_config = model_configs[model]
        cls = strategy_class(spec.name)  # what it needs is declared on the class (Strategy.needs_next_head, ...)
        if cls.needs_next_head and not model_config.get("next_token_head", False):
            raise ConfigError(config.source, f"{spec.where}.name",
                              f"strategy {spec.name!r} needs the model's next-token head, but "
                              f"{model} has next_token_head=false")
        if cls.needs_delete_token and model_config.get("delete_token_id") is None:
            raise ConfigError(config.source, f"{spec.where}.name",
                              f"strategy {spec.name!r} needs a delete token, but {model} has none "
                              "(delete_token_id is null: convert it with --delete-token NAME)")


def _check_strategy(config: ExperimentConfig, spec: StrategySpec) -> None:
    from refinery.core.decode import check_budget
    from refinery.strategies.registry import strategy_class

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
        try:
            max_nfe = check_budget(budget, config.gen_length)
        except ValueError as e:
            raise ConfigError(src, f"{budget_key}[{j}]", str(e)) from None
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
    if param in spec.from_preset:  # set by the preset alone: the preset is what to change
        return f"{spec.where}.preset ({spec.preset!r} sets {param})"
    return f"{spec.where}.{'sweep' if param in spec.swept else 'params'}.{param}"


def _strip_where(message: str, name: str, param: str) -> str:
    """'masked: temperature: expected a number' -> 'expected a number' (the key already says where)."""
    for prefix in (f"{name}: {param}: ", f"{name}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _check_task(config: ExperimentConfig, i: int, task, check_paths: bool) -> None:
    from refinery.core.tasks import TASKS
    from refinery.strategies.registry import unknown_name_message

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
    if check_paths:
        _check_task_data(config, where, task)


def _check_task_data(config: ExperimentConfig, where: str, task) -> None:
    """The task's data can be loaded (files only: nothing is downloaded while checking)."""
    from refinery.core.tasks import get_task

    try:
        instance = get_task(task.name, **task.kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(config.source, f"{where}.kwargs", str(e)) from None
    check = getattr(instance, "check_data", None)  # generated tasks have nothing to check
    if check is None:
        return
    try:
        check(task.split)
    except (ValueError, FileNotFoundError) as e:
        key = f"{where}.kwargs.data_dir" if "data_dir" in task.kwargs or "data_dir" in str(e) else f"{where}.kwargs"
        raise ConfigError(config.source, key, str(e)) from None


def _check_device(config: ExperimentConfig) -> None:
    from refinery.core.checkpoint import check_device

    try:
        check_device(config.device, field="")  # the key "device" is in the message already
    except ValueError as e:
        raise ConfigError(config.source, "device", str(e)) from None


def _check_tokenizer(config: ExperimentConfig, model: str, model_key: str) -> None:
    from refinery.core.checkpoint import resolve_model_path
    from refinery.core.tokenizer import check_tokenizer_dir

    key = "tokenizer" if config.tokenizer else model_key
    try:
        check_tokenizer_dir(config.tokenizer or resolve_model_path(model))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(config.source, key, str(e)) from None


def _model_config(config: ExperimentConfig, model: str, key: str) -> dict:
    from refinery.core.checkpoint import check_checkpoint, read_checkpoint_config

    try:
        return read_checkpoint_config(check_checkpoint(model))
    except (ValueError, OSError) as e:
        raise ConfigError(config.source, key, str(e)) from None


def validate_file(path: str | Path, check_paths: bool = False, limit: Optional[int] = None) -> ExperimentConfig:
    """load_config + validate in one call."""
    from refinery.experiments.config import load_config

    config = load_config(path).with_overrides(limit=limit)
    validate(config, check_paths=check_paths)
    return config
