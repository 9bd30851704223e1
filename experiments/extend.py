"""Growing a run directory: which config changes add cells (extend) and which alter stored ones (refuse).

A run directory holds rows keyed by (task, example, strategy label, budget, seed). A new config may
reuse the directory when every cell it shares with the stored config means the same thing:

- extends: more examples of a task (a larger ``n`` / ``--limit``: examples are a fixed-order prefix),
  another task, another strategy entry (a new label), another budget or seed; and any subset of the
  stored config (``--only``, a smaller ``--limit``) is simply a part of it;
- refuses: a different model, tokenizer, gen_length, batch_size, dtype, device or trace setting, a
  task whose split, seed or options changed, an existing label with other params, strategy, budgets or model.

The stored ``config.yaml`` then describes the union of every config that wrote rows, so ``report``
and a later resume see all entries; :func:`merge_configs` builds it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from refinery.experiments.config import ExperimentConfig, StrategySpec, TaskSpec

# Keys that only change how a run is carried out, never a row's content.
FREE_KEYS = ("name", "score_workers")
# Keys whose every value defines the cells; the collections below are compared entry by entry.
GROWING_KEYS = ("tasks", "strategies", "budgets", "seeds")


def merge_configs(stored: ExperimentConfig, new: ExperimentConfig) -> tuple[ExperimentConfig, list[str]]:
    """-> (the union of both configs, the reasons the new one alters stored cells; empty = compatible).

    The union keeps the stored order and appends what is new; a task's ``n`` becomes the larger
    (None, the whole split, is largest)."""
    problems = _fixed_key_changes(stored, new)
    tasks, task_problems = _merge_tasks(stored.tasks, new.tasks)
    strategies, strat_problems = _merge_strategies(stored.strategies, new.strategies)
    problems += task_problems + strat_problems
    union = dataclasses.replace(
        stored, tasks=tasks, strategies=strategies,
        budgets=stored.budgets + tuple(b for b in new.budgets if b not in stored.budgets),
        seeds=stored.seeds + tuple(s for s in new.seeds if s not in stored.seeds))
    return union, problems


def _fixed_key_changes(stored: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    old_d, new_d = stored.to_dict(), new.to_dict()
    return [f"{key}: {old_d.get(key)!r} -> {new_d.get(key)!r}" for key in old_d
            if key not in FREE_KEYS + GROWING_KEYS and old_d.get(key) != new_d.get(key)]


def _merge_tasks(stored: tuple[TaskSpec, ...], new: tuple[TaskSpec, ...]) -> tuple[tuple[TaskSpec, ...], list[str]]:
    def grow(old: TaskSpec, t: TaskSpec) -> TaskSpec:  # a larger n (--limit) only adds examples
        return dataclasses.replace(old, n=None if old.n is None or t.n is None else max(old.n, t.n))

    return _merge("tasks", stored, new, "name", ("split", "seed", "kwargs"), grow)


def _merge_strategies(stored: tuple[StrategySpec, ...],
                      new: tuple[StrategySpec, ...]) -> tuple[tuple[StrategySpec, ...], list[str]]:
    return _merge("strategies", stored, new, "label", ("name", "params", "budgets", "model"), lambda old, s: old)


def _merge(section: str, stored: tuple, new: tuple, key: str, fixed: tuple[str, ...],
           grow: Callable[[Any, Any], Any]) -> tuple[tuple, list[str]]:
    """The union of two spec lists matched by ``key``: new specs are added, a matched spec keeps its
    ``fixed`` fields (each change is a problem, named) and is ``grow``n by the new one."""
    merged = {getattr(x, key): x for x in stored}
    problems = []
    for x in new:
        name = getattr(x, key)
        old = merged.get(name)
        if old is None:
            merged[name] = x
            continue
        for field in fixed:
            if _plain(getattr(old, field)) != _plain(getattr(x, field)):
                problems.append(f"{section}: {name}.{field}: {_plain(getattr(old, field))!r} -> "
                                f"{_plain(getattr(x, field))!r}")
        merged[name] = grow(merged[name], x)
    return tuple(merged.values()), problems


def _plain(value: Any) -> Any:
    """Mappings and tuples as dicts and lists, so that a config read back from YAML compares equal."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in dict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
