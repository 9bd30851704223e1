"""Ablation configs: one YAML file -> one frozen, typed :class:`ExperimentConfig`.

    config = load_config("experiments/ablations/embedded_default.yaml")
    validate(config)                       # every combination checked before any work starts

A file names a model, tasks, strategies (each ``{name, label?, preset?, params?, sweep?, budgets?}``),
budgets, a generation length, batch size, device, dtype and seeds. ``sweep: {eta: [0.02, 0.04]}``
expands one strategy entry into one entry per value (the Cartesian product over several keys).
``preset: paper`` starts the entry from the strategy's named preset (``refinery strategies --presets``);
``params`` and ``sweep`` override single parameters of it. The preset is resolved here, so every row
records the parameters it ran with; the default label is ``NAME-PRESET``.
``cache: none | prefix | dual`` (KV-cached decoding, see ``core.decode``) sets the mode for every entry at
the top level, or for one entry. ``model:`` on an entry decodes that entry with another checkpoint
(a directory or a shipped name such as ``embedded-r2ft_conv``); ``--model`` replaces the file's model only.

Every mistake raises :class:`ConfigError` naming the file, the dotted key
(``strategies[2].params.block_length``) and the reason. Types, ranges and choices are declared on the
dataclass fields below and checked by :mod:`core.typed`, the path every config of the project takes.
YAML is read with ``yaml.safe_load`` only, so no code runs from a config file. Relative paths (model,
``data_dir``) are taken relative to the working directory the command runs in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from refinery.core.errors import ConfigError, read_text
from refinery.core.typed import DTYPE_NAMES, build

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "ablations" / "embedded_default.yaml"
CACHE_MODES = ("none", "prefix", "dual")  # the loop's KV-cache modes (strategies.base.CACHE_MODES)
DTYPES = tuple(DTYPE_NAMES)  # None, "auto", "fp32", ... (core.typed.DTYPE_NAMES; core.checkpoint maps them)
CACHE = {"choices": CACHE_MODES, "noun": "cache mode"}  # field metadata of the cache keys
AT_LEAST_ONE = {"range": (1, None)}


@dataclass(frozen=True)
class TaskSpec:
    name: str  # registered task name (core.tasks)
    n: Optional[int] = field(default=None, metadata=AT_LEAST_ONE)  # examples to draw; None = the whole split
    split: str = "test"
    seed: int = 0  # which examples are drawn (and, for generated tasks, how they are generated)
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # task constructor arguments (e.g. data_dir)


@dataclass(frozen=True)
class StrategySpec:
    """One expanded strategy entry (a sweep has already been split into one spec per value)."""

    name: str  # registered strategy name
    label: str  # unique within a config: what tables and rows call this entry
    params: Mapping[str, Any]  # strategy parameters as written (plus the swept values)
    budgets: Optional[tuple[str, ...]] = None  # overrides the config's budgets for this entry
    where: str = field(default="", compare=False)  # dotted key of the source entry, for error messages
    swept: tuple[str, ...] = field(default=(), compare=False)  # params that came from ``sweep``
    preset: Optional[str] = None  # the named preset the params started from (already merged into params)
    from_preset: tuple[str, ...] = field(default=(), compare=False)  # params set by the preset alone
    cache: Optional[str] = None  # KV-cache mode of this entry; None = the config's ``cache``
    model: Optional[str] = None  # checkpoint of this entry (directory or shipped name); None = the config's


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    model: str  # checkpoint directory or shipped name ("embedded", ...)
    # the lists of the file go through their parsers below (lambdas: those are defined after this class)
    tasks: tuple[TaskSpec, ...] = field(metadata={"parse": lambda v, key, src: _tasks(v, key, src)})
    strategies: tuple[StrategySpec, ...] = field(metadata={"parse": lambda v, key, src: _strategies(v, key, src)})
    budgets: tuple[str, ...] = field(metadata={"parse": lambda v, key, src: _budgets(v, key, src)})  # "a/b" strings
    gen_length: int = field(metadata=AT_LEAST_ONE)
    batch_size: int = field(metadata=AT_LEAST_ONE)  # examples per generate() call (a "cell")
    seeds: tuple[int, ...] = field(default=(0,), metadata={"min_len": 1})
    tokenizer: Optional[str] = None  # tokenizer directory; None = the model directory
    delete_token: Optional[str] = None  # LLaDA-8B: the reserved token that plays <|del|>
    device: str = "cpu"
    dtype: Optional[str] = field(default=None, metadata={"choices": DTYPES})
    score_workers: int = field(default=2, metadata=AT_LEAST_ONE)  # sandbox processes for code scoring
    save_traces: bool = True
    cache: str = field(default="none", metadata=CACHE)  # KV-cache mode of entries that do not set their own
    source: str = field(default="<dict>", compare=False, metadata={"internal": True})  # file the config came from
    # tune protocol file (relative to the config file) whose test_looks each run of this config counts;
    # bookkeeping, not part of the config's hash (experiments.tune)
    protocol: Optional[str] = field(default=None, compare=False)

    def budgets_for(self, spec: StrategySpec) -> tuple[str, ...]:
        return spec.budgets if spec.budgets is not None else self.budgets

    def _only_budgets(self, budgets: Sequence[str]) -> "ExperimentConfig":
        """The cells at ``budgets`` only: the file's budget list and each entry's own list cut to them (an
        entry left with none is dropped). A budget no cell of the file runs is an error, so a typo never
        runs nothing; a run directory of the whole file takes the result (its stored config is the union)."""
        flag = f"--budgets {','.join(map(str, budgets))}"
        try:
            keep = [canonical_budget(b) for b in budgets]
        except ValueError as e:
            raise ValueError(f"{flag}: {e}") from None
        known = set(self.budgets).union(*(self.budgets_for(s) for s in self.strategies))
        unknown = [b for b in keep if b not in known]
        if unknown or not keep:
            raise ValueError(f"{flag}: {self.source} runs no cell at {', '.join(unknown) or 'no budget'} "
                             f"(its budgets: {', '.join(most_passes_first(known))})")
        specs = []
        for s in self.strategies:
            if s.budgets is None:
                specs.append(s)
            elif any(b in keep for b in s.budgets):
                specs.append(dataclasses.replace(s, budgets=tuple(b for b in s.budgets if b in keep)))
        return dataclasses.replace(self, budgets=tuple(b for b in self.budgets if b in keep), strategies=tuple(specs))

    def cache_for(self, spec: StrategySpec) -> str:
        return spec.cache if spec.cache is not None else self.cache

    def model_for(self, spec: StrategySpec) -> str:
        """The checkpoint an entry decodes with: its own ``model``, else the config's."""
        return spec.model if spec.model is not None else self.model

    def models(self) -> tuple[str, ...]:
        """Every distinct checkpoint the entries use, the config's first when any entry uses it."""
        return tuple(dict.fromkeys(self.model_for(s) for s in self.strategies))

    def to_dict(self) -> dict:
        """The resolved config (sweeps expanded) as plain YAML-able data; ``load_config`` reads it back."""
        # cache keys only when set: configs without them keep their hash (and their run directories)
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if k not in ("source", "protocol") and (k != "cache" or v != "none")}
        d["tasks"] = [dict(t.__dict__, kwargs=dict(t.kwargs)) for t in self.tasks]
        d["strategies"] = [{"name": s.name, "label": s.label, **({"preset": s.preset} if s.preset else {}),
                            "params": dict(s.params), **({"budgets": list(s.budgets)} if s.budgets is not None else {}),
                            **({"cache": s.cache} if s.cache is not None else {}),
                            **({"model": s.model} if s.model is not None else {})}
                           for s in self.strategies]
        d["budgets"], d["seeds"] = list(self.budgets), list(self.seeds)
        return d

    def hash(self) -> str:
        """sha256 of the resolved config: a run directory only ever holds rows of one config."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def with_overrides(self, *, model: Optional[str] = None, device: Optional[str] = None,
                       limit: Optional[int] = None, only: Optional[Sequence[str]] = None,
                       batch_size: Optional[int] = None, score_workers: Optional[int] = None,
                       budgets: Optional[Sequence[str]] = None) -> "ExperimentConfig":
        """Command-line overrides; ``limit`` caps the examples drawn per task, ``only`` keeps the strategy
        entries with these labels, ``budgets`` the cells at these budgets (of the file's); ``batch_size`` and
        ``score_workers`` change how the run is carried out (a row's output does not depend on its batch: every
        row draws from its own seeded generator)."""
        cfg = self
        for flag, value in (("--batch-size", batch_size), ("--score-workers", score_workers)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{flag} {value}: must be an integer >= 1")
        if batch_size is not None:
            cfg = dataclasses.replace(cfg, batch_size=batch_size)
        if score_workers is not None:
            cfg = dataclasses.replace(cfg, score_workers=score_workers)
        if only is not None:
            labels = [s.label for s in cfg.strategies]
            unknown = [o for o in only if o not in labels]
            if unknown or not only:
                raise ValueError(f"--only {','.join(only)}: {cfg.source} has no strategy entry labelled "
                                 f"{', '.join(map(repr, unknown)) or 'that'} (labels: {', '.join(labels)})")
            cfg = dataclasses.replace(cfg, strategies=tuple(s for s in cfg.strategies if s.label in only))
        if budgets is not None:
            cfg = cfg._only_budgets(budgets)
        if model is not None:
            cfg = dataclasses.replace(cfg, model=str(model))
        if device is not None:
            cfg = dataclasses.replace(cfg, device=device)
        if limit is not None:
            if limit < 1:
                raise ValueError(f"--limit {limit}: must be >= 1")
            tasks = tuple(dataclasses.replace(t, n=limit if t.n is None else min(t.n, limit)) for t in cfg.tasks)
            cfg = dataclasses.replace(cfg, tasks=tasks)
        return cfg


def read_yaml_file(path: str | Path, what: str = "config") -> Any:
    """A YAML file's data (``yaml.safe_load`` only, so no code runs); a missing file, a non-UTF-8 one or
    invalid YAML is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(read_text(path))  # read_text names a non-UTF-8 file
    except yaml.YAMLError as e:
        raise ConfigError(str(path), "", f"not valid YAML ({e})") from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and structurally check a YAML file (see :func:`validate` for the combinations)."""
    return config_from_dict(read_yaml_file(path), source=str(path))


def config_from_dict(data: Any, source: str = "<dict>") -> ExperimentConfig:
    """Plain dict (a parsed YAML file) -> checked ExperimentConfig; mistakes raise ConfigError naming ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got {type(data).__name__}")
    return build(ExperimentConfig, {"name": Path(source).stem, "model": "embedded", **data}, source, source=source)


@dataclass(frozen=True)
class _StrategyEntry:
    """One strategy entry as written in the file, before its preset is merged and its sweep expanded."""

    name: str
    label: Optional[str] = None  # default: NAME, or NAME-PRESET
    preset: Optional[str] = None
    params: Optional[dict] = None
    sweep: Optional[dict] = None
    budgets: Optional[tuple[str, ...]] = field(default=None, metadata={"parse": lambda v, k, src: _budgets(v, k, src)})
    cache: Optional[str] = field(default=None, metadata=CACHE)
    model: Optional[str] = None  # another checkpoint for this entry (a directory or a shipped name)


def _list(value, key: str, source: str) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(source, key, f"expected a non-empty list, got {value!r}")
    return value


def most_passes_first(budgets) -> list[str]:
    """Budget strings ('1/8', '1/1', ...) from the most forward passes to the fewest: '1/1', '1/2', ..."""
    return sorted(budgets, key=lambda b: -Fraction(b))


def canonical_budget(value) -> str:
    """'1/8', 0.125, 1 -> '1/8', '1/8', '1/1' (raises ValueError on a bad budget)."""
    from refinery.core.decode import parse_budget

    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"budget {value!r} is not a fraction like '1/4' or a number")
    frac = parse_budget(value)
    return f"{frac.numerator}/{frac.denominator}"


def _budgets(value, key: str, source: str) -> tuple[str, ...]:
    out = []
    for j, b in enumerate(_list(value, key, source)):
        try:
            out.append(canonical_budget(b))
        except ValueError as e:
            raise ConfigError(source, f"{key}[{j}]", str(e)) from None
    if len(set(out)) != len(out):
        raise ConfigError(source, key, f"budgets repeat: {out}")
    return tuple(out)


def _tasks(value, key: str, source: str) -> tuple[TaskSpec, ...]:
    tasks: list[TaskSpec] = []
    for i, entry in enumerate(_list(value, key, source)):
        where = f"{key}[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise ConfigError(source, where, f"expected a task name or a mapping, got {entry!r}")
        if "kwargs" in entry and entry["kwargs"] is None:  # an empty "kwargs:" line
            entry = {k: v for k, v in entry.items() if k != "kwargs"}
        task = build(TaskSpec, entry, source, at=where)
        if any(t.name == task.name for t in tasks):
            raise ConfigError(source, f"{where}.name",
                              f"task {task.name!r} is listed twice; rows are keyed by task name")
        tasks.append(task)
    return tuple(tasks)


def _strategies(value, key: str, source: str) -> tuple[StrategySpec, ...]:
    specs = tuple(s for i, entry in enumerate(_list(value, key, source))
                  for s in _strategy_specs(entry, f"{key}[{i}]", source))
    seen: dict[str, str] = {}
    for s in specs:
        if s.label in seen:
            raise ConfigError(source, f"{s.where}.label", f"label {s.label!r} is used twice (also by {seen[s.label]}); "
                                                         "give each entry a distinct label")
        seen[s.label] = s.where
    return specs


def _strategy_specs(entry, where: str, source: str) -> list[StrategySpec]:
    """One YAML strategy entry -> one spec, or one per point of its sweep grid."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise ConfigError(source, where, f"expected a strategy name or a mapping, got {entry!r}")
    e = build(_StrategyEntry, entry, source, at=where)
    label = e.label if e.label is not None else (f"{e.name}-{e.preset}" if e.preset else e.name)
    params, sweep = e.params or {}, e.sweep or {}
    for k, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(source, f"{where}.sweep.{k}", f"expected a non-empty list of values, got {values!r}")
        if k in params:
            raise ConfigError(source, f"{where}.sweep.{k}", "is also set under params; set it in one place")
    base = _preset_params(e.name, e.preset, where, source)
    from_preset = tuple(k for k in base if k not in params and k not in sweep)
    params = {**base, **params}  # the entry's params, then its sweep, override the preset
    model = e.model
    if not sweep:
        return [StrategySpec(e.name, label, dict(params), e.budgets, where, (), e.preset, from_preset, e.cache, model)]
    keys = list(sweep)
    specs = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        point = dict(zip(keys, values))
        if "{" in label:
            try:
                point_label = label.format(**point)
            except (KeyError, IndexError, ValueError) as err:
                raise ConfigError(source, f"{where}.label", f"cannot fill {label!r} from the sweep keys {keys} "
                                                            f"({err})") from None
        else:
            point_label = f"{label}[{','.join(f'{k}={v}' for k, v in point.items())}]"
        specs.append(StrategySpec(e.name, point_label, {**params, **point}, e.budgets, where, tuple(keys), e.preset,
                                  from_preset, e.cache, model))
    return specs


def _preset_params(name: str, preset: Optional[str], where: str, source: str) -> dict:
    """The parameters of ``preset`` of strategy ``name`` ({} without a preset), or a ConfigError."""
    if preset is None:
        return {}
    from refinery.strategies.registry import preset_params, strategy_class

    try:
        strategy_class(name)
    except KeyError as e:
        raise ConfigError(source, f"{where}.name", e.args[0]) from None
    try:
        return preset_params(name, preset)
    except KeyError as e:
        raise ConfigError(source, f"{where}.preset", e.args[0]) from None


def dump_config(config: ExperimentConfig) -> str:
    header = f"# resolved config of {config.source} (sweeps expanded); sha256 {config.hash()}\n"
    return header + yaml.safe_dump(config.to_dict(), sort_keys=False)


def validate(config: ExperimentConfig, check_paths: bool = False) -> None:
    """Check every combination before any work starts (see :mod:`experiments.validate`)."""
    from refinery.experiments.validate import validate as _validate

    _validate(config, check_paths=check_paths)
