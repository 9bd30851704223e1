"""``refinery tune``: an equal-budget tuning protocol on the dev split, run as one ordinary ablation.

A tune YAML is an ablation YAML on the dev split plus a ``protocol`` block and a ``space`` per entry::

    protocol: {trials: 8, sampler: random, seed: 0, select: mean}   # or sampler: grid, select: per_budget
    tasks: [{name: arith, n: 32, split: dev}]                      # dev only; test_tasks: for the winners
    strategies:
      - name: masked
        label: masked
        preset: paper                  # optional: strategies.preset_params(name, preset), then params
        params: {remasking: low_confidence}
        model: embedded-r2ft_conv      # optional: this entry's checkpoint (default: the file's model)
        space: {remasking: [low_confidence, random], block_length: [null, 8, 16]}

Every entry gets exactly ``trials`` settings (:mod:`experiments.search`), its start (preset + params) as
trial 0. Trial ``i`` of entry ``masked`` becomes an ordinary strategy entry labelled ``masked/t03`` of one
:class:`ExperimentConfig`, run by the ablation runner into one resumable, locked store. Then the declared
rule picks the winners (``mean``: mean strict accuracy over tasks x budgets; ``per_budget``: the best trial
at each budget; ties go to the lowest trial index) and the run directory gets:

    RUN/protocol.json   spaces, trial count, sampler and seed, every trial's params and dev scores, the rule,
                        the winners, and ``test_looks``: how many times ``refinery ablate`` ran the winners
    RUN/winners.yaml    an ablation config on the test split of every entry's start (``masked/paper``: its
                        untuned preset) and its winning setting (``masked``); ``protocol:`` names the
                        protocol file, so each ablate run on it is counted
    RUN/trials.md       the trials-per-strategy table
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from refinery.core.errors import write_json_atomic
from refinery.experiments.config import (ConfigError, ExperimentConfig, StrategySpec, config_from_dict,
                                        most_passes_first, read_yaml_file)
from refinery.experiments.search import SAMPLERS, Dim, SpaceError, parse_space, sample_trials

log = logging.getLogger(__name__)

SELECT_RULES = ("mean", "per_budget")
PROTOCOL_FILE, WINNERS_FILE, TABLE_FILE = "protocol.json", "winners.yaml", "trials.md"
TUNE_TOP_KEYS = {"protocol", "test_tasks"}  # beside the ablation keys
PROTOCOL_KEYS = {"trials", "sampler", "seed", "select"}
TUNE_ENTRY_KEYS = {"preset", "space"}  # beside the ablation entry keys (sweep is refused: the space replaces it)


@dataclass(frozen=True)
class TuneEntry:
    """One strategy entry of a tune config and the settings its trials run."""

    label: str
    name: str  # registered strategy
    preset: Optional[str]
    start: dict  # preset params + written params: trial 0
    dims: tuple[Dim, ...]
    trials: tuple[dict, ...]  # full params of every trial, trial 0 first
    extra: dict  # other ablation entry keys (budgets, ...) copied onto every trial entry

    def trial_label(self, i: int) -> str:
        return f"{self.label}/t{i:02d}"


@dataclass(frozen=True)
class TuneConfig:
    source: str
    trials: int
    sampler: str
    seed: int
    select: str
    entries: tuple[TuneEntry, ...]
    experiment: ExperimentConfig  # every trial of every entry, on the dev split
    base: dict  # the ablation keys other than tasks and strategies (model, budgets, gen_length, ...)
    test_tasks: tuple  # task entries of the winners config (default: the tune tasks on split test)

    def experiment_for(self, *, limit: Optional[int] = None, only: Optional[Sequence[str]] = None,
                       model: Optional[str] = None, device: Optional[str] = None,
                       batch_size: Optional[int] = None, score_workers: Optional[int] = None) -> ExperimentConfig:
        """The trial ablation with command-line overrides; ``only`` names entry labels (all their trials)."""
        labels = [e.label for e in self.entries]
        if only is not None:
            unknown = [o for o in only if o not in labels]
            if unknown or not only:
                raise ValueError(f"--only {','.join(only)}: {self.source} has no strategy entry labelled "
                                 f"{', '.join(map(repr, unknown)) or 'that'} (labels: {', '.join(labels)})")
            only = [e.trial_label(i) for e in self.entries if e.label in only for i in range(len(e.trials))]
        return self.experiment.with_overrides(limit=limit, only=only, model=model, device=device,
                                              batch_size=batch_size, score_workers=score_workers)


def load_tune(path: str | Path) -> TuneConfig:
    """Read a tune YAML (``yaml.safe_load`` only); every mistake is a :class:`ConfigError` naming the key."""
    return tune_from_dict(read_yaml_file(path, "tune config"), source=str(path))


def tune_from_dict(data: Any, source: str = "<dict>") -> TuneConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got {type(data).__name__}")
    proto = _protocol(data.get("protocol"), source)
    base = {k: v for k, v in data.items() if k not in TUNE_TOP_KEYS | {"tasks", "strategies"}}
    if not isinstance(data.get("strategies"), list) or not data["strategies"]:
        raise ConfigError(source, "strategies", f"expected a non-empty list, got {data.get('strategies')!r}")
    # The ablation part first, with the written starts only: its own checks name the keys as written.
    probe = config_from_dict({**base, "tasks": data.get("tasks"),
                              "strategies": [_strip_entry(e) for e in data["strategies"]]}, source)
    for i, task in enumerate(probe.tasks):
        if task.split != "dev":
            raise ConfigError(source, f"tasks[{i}].split", f"tuning runs on the dev split only, got "
                                                           f"{task.split!r} (write split: dev)")
    test_tasks = data.get("test_tasks", [dict(_task_dict(t), split="test") for t in probe.tasks])
    check = config_from_dict({**base, "tasks": test_tasks, "strategies": ["masked"]}, source)
    for i, task in enumerate(check.tasks):
        if task.split != "test":
            raise ConfigError(source, f"test_tasks[{i}].split",
                              f"the winners run on the test split, got {task.split!r}")
    entries = tuple(_entry(e, i, probe, proto, source) for i, e in enumerate(data["strategies"]))
    trial_entries = [dict(e.extra, name=e.name, label=e.trial_label(i), params=p)
                     for e in entries for i, p in enumerate(e.trials)]
    experiment = config_from_dict({**base, "tasks": data["tasks"], "strategies": trial_entries}, source)
    return TuneConfig(source=source, entries=entries, experiment=experiment, base=base,
                      test_tasks=tuple(test_tasks), **proto)


def _protocol(raw: Any, source: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(source, "protocol", f"required mapping {{trials, sampler, seed, select}}, got {raw!r}")
    for k in raw:
        if k not in PROTOCOL_KEYS:
            raise ConfigError(source, f"protocol.{k}", f"unknown key; known keys: {sorted(PROTOCOL_KEYS)}")
    for k in ("trials", "sampler", "select"):
        if k not in raw:
            raise ConfigError(source, f"protocol.{k}", "required key is missing (declared before the run)")
    trials, seed = raw["trials"], raw.get("seed", 0)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(source, "protocol.trials", f"expected an integer >= 1, got {trials!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(source, "protocol.seed", f"expected an integer, got {seed!r}")
    if raw["sampler"] not in SAMPLERS:
        raise ConfigError(source, "protocol.sampler", f"{raw['sampler']!r} is not one of {list(SAMPLERS)}")
    if raw["sampler"] == "random" and "seed" not in raw:
        raise ConfigError(source, "protocol.seed", "sampler: random needs a declared seed")
    if raw["select"] not in SELECT_RULES:
        raise ConfigError(source, "protocol.select", f"{raw['select']!r} is not one of {list(SELECT_RULES)}")
    return dict(trials=trials, sampler=raw["sampler"], seed=seed, select=raw["select"])


def _strip_entry(entry: Any) -> Any:
    return {k: v for k, v in entry.items() if k not in TUNE_ENTRY_KEYS} if isinstance(entry, dict) else entry


def _task_dict(t) -> dict:
    return {k: v for k, v in dict(dataclasses.asdict(t), kwargs=dict(t.kwargs)).items() if v is not None}


def _entry(raw: Any, i: int, probe: ExperimentConfig, proto: dict, source: str) -> TuneEntry:
    where = f"strategies[{i}]"
    if not isinstance(raw, dict) or "space" not in raw:
        raise ConfigError(source, f"{where}.space", "every entry of a tune config declares a search space")
    if "sweep" in raw:
        raise ConfigError(source, f"{where}.sweep", "a tune entry searches its space; write the values there")
    spec = probe.strategies[i]
    preset = raw.get("preset")
    start = dict(spec.params)
    if preset is not None:
        from refinery.strategies import preset_params

        try:
            start = {**preset_params(spec.name, preset), **start}
        except KeyError as e:
            raise ConfigError(source, f"{where}.preset", e.args[0] if e.args else str(e)) from None
    try:
        dims = parse_space(raw["space"], f"{where}.space")
        _known_params(spec.name, dims, f"{where}.space")
        trials = sample_trials(dims, start, proto["trials"], proto["sampler"], proto["seed"], spec.label,
                               _canon(probe, spec), f"{where}.space")
    except SpaceError as e:
        raise ConfigError(source, e.key, e.reason) from None
    extra = {k: v for k, v in raw.items() if k not in TUNE_ENTRY_KEYS | {"name", "label", "params"}}
    return TuneEntry(label=spec.label, name=spec.name, preset=preset, start=start, dims=dims,
                     trials=tuple(trials), extra=extra)


def _known_params(name: str, dims: Sequence[Dim], where: str) -> None:
    from refinery.strategies.registry import strategy_class

    fields = sorted(f.name for f in dataclasses.fields(strategy_class(name).config_class))
    for d in dims:
        if d.name not in fields:
            raise SpaceError(f"{where}.{d.name}", f"unknown parameter of strategy {name!r}; known: {fields}")


def _canon(probe: ExperimentConfig, spec: StrategySpec):
    """params -> the full resolved config as JSON; ValueError when it cannot run at some budget of the entry."""
    from refinery.experiments.config import validate
    from refinery.strategies.registry import strategy_class

    cls = strategy_class(spec.name)

    def canon(params: dict) -> str:
        trial = dataclasses.replace(spec, params=dict(params), swept=())
        try:
            validate(dataclasses.replace(probe, tasks=(), strategies=(trial,)))
        except ConfigError as e:
            raise ValueError(f"{e.key}: {e.reason}") from None
        return json.dumps(cls.config_class.from_dict(dict(params)).as_dict(), sort_keys=True, default=str)

    return canon


# ---- scores and selection -------------------------------------------------------------------------------

def trial_scores(entry: TuneEntry, rows: Sequence[dict]) -> list[Optional[dict]]:
    """Per trial: strict accuracy per (task, budget) cell, the mean over cells and the per-budget means
    (exact fractions, so equal scores tie exactly); None for a trial without rows."""
    cells: dict[str, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[r["label"]][(r["task"], r["budget"])].append(bool(r["correct"]))
    out = []
    for i in range(len(entry.trials)):
        c = cells.get(entry.trial_label(i))
        if not c:
            out.append(None)
            continue
        acc = {k: Fraction(sum(v), len(v)) for k, v in c.items()}
        budgets = most_passes_first({b for _, b in acc})
        per_budget = {b: _mean([a for (_, bb), a in acc.items() if bb == b]) for b in budgets}
        out.append(dict(cells=acc, mean=_mean(list(acc.values())), per_budget=per_budget))
    return out


def _mean(values: list) -> Fraction:
    return sum(values, Fraction(0)) / len(values)


def select(entry: TuneEntry, scores: list[Optional[dict]], rule: str) -> dict[str, int]:
    """budget ('*' for the rule ``mean``) -> winning trial index; ties go to the lowest index."""
    scored = [i for i, s in enumerate(scores) if s is not None]
    if not scored:
        return {}
    if rule == "mean":
        return {"*": max(scored, key=lambda i: (scores[i]["mean"], -i))}
    budgets = most_passes_first({b for i in scored for b in scores[i]["per_budget"]})
    out = {}
    for b in budgets:
        have = [i for i in scored if b in scores[i]["per_budget"]]
        out[b] = max(have, key=lambda i: (scores[i]["per_budget"][b], -i))
    return out


def start_label(entry: TuneEntry) -> str:
    """The winners config's label of an entry's untuned start (trial 0): ``masked/paper``, ``x/start``."""
    return f"{entry.label}/{entry.preset or 'start'}"


def winners_config(tune: TuneConfig, winners: dict[str, dict[str, int]]) -> dict:
    """The ablation config (plain data) on the test split of every entry's untuned start (its preset,
    labelled :func:`start_label`) and its winners; ``protocol`` names the protocol file relative to the
    winners file. The start runs even when it won, so every strategy has a preset row and a tuned row."""
    entries = []
    for e in tune.entries:
        won = winners.get(e.label)
        if not won:
            continue
        entries.append(dict(e.extra, name=e.name, label=start_label(e), params=dict(e.trials[0])))
        if "*" in won:
            entries.append(dict(e.extra, name=e.name, label=e.label, params=dict(e.trials[won["*"]])))
            continue
        by_trial: dict[int, list] = defaultdict(list)
        for b, i in won.items():
            by_trial[i].append(b)
        for i in sorted(by_trial):  # one entry per winning trial, at the budgets it won
            entries.append(dict(e.extra, name=e.name, label=e.trial_label(i), params=dict(e.trials[i]),
                                budgets=by_trial[i]))
    name = tune.base.get("name", Path(tune.source).stem)
    return {**tune.base, "name": f"{name}_winners", "tasks": [dict(t) if isinstance(t, dict) else t
                                                              for t in tune.test_tasks],
            "strategies": entries, "protocol": PROTOCOL_FILE}


def _num(x: Fraction) -> float:
    return round(float(x), 6)


def protocol_record(tune: TuneConfig, experiment: ExperimentConfig, scores: dict, winners: dict,
                    looks: dict, limit: Optional[int]) -> dict:
    """The protocol file's content (JSON-able)."""
    entries = []
    for e in tune.entries:
        sc = scores.get(e.label) or [None] * len(e.trials)
        trials = []
        for i, (params, s) in enumerate(zip(e.trials, sc)):
            dev = None if s is None else dict(mean=_num(s["mean"]),
                                              per_budget={b: _num(v) for b, v in s["per_budget"].items()},
                                              cells={f"{t}|{b}": _num(v) for (t, b), v in s["cells"].items()})
            trials.append(dict(trial=i, label=e.trial_label(i), params=params, dev=dev))
        entries.append(dict(label=e.label, strategy=e.name, **({"model": e.extra["model"]} if "model" in e.extra
                                                               else {}), preset=e.preset, start=e.start,
                            space={d.name: d.describe() for d in e.dims}, trials=trials,
                            winners=winners.get(e.label, {})))
    return dict(protocol_version=1, tune_config=tune.source, config_sha256=experiment.hash(), split="dev",
                trials=tune.trials, sampler=tune.sampler, seed=tune.seed, select=tune.select,
                tie_break="lowest trial index", limit=limit, model=experiment.model,
                decode_seeds=list(experiment.seeds), tasks=[_task_dict(t) for t in experiment.tasks],
                budgets=list(experiment.budgets), entries=entries,
                winners_config=WINNERS_FILE if winners else None,
                test_looks=looks.get("test_looks", 0), test_runs=looks.get("test_runs", []))


def read_protocol(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


# ---- the run ----------------------------------------------------------------------------------------------

def plan_record(tune: TuneConfig, *, limit: Optional[int] = None, only: Optional[Sequence[str]] = None) -> dict:
    """The protocol as declared, before any run: every entry's drawn trials, no scores (paths not checked)."""
    from refinery.experiments.config import validate

    experiment = tune.experiment_for(limit=limit, only=only)
    validate(experiment, check_paths=False)
    return protocol_record(_kept(tune, experiment), experiment, {}, {}, {}, limit)


def run_tune(tune: TuneConfig, out_dir: str | Path, *, limit: Optional[int] = None,
             only: Optional[Sequence[str]] = None, model: Optional[str] = None, device: Optional[str] = None,
             batch_size: Optional[int] = None, score_workers: Optional[int] = None, progress: bool = True) -> dict:
    """Run (or finish) every trial on dev, select, and write the protocol, winners and table; -> protocol.

    The protocol file is written before the first trial (no scores yet) and again at the end, so a killed
    run leaves its declared protocol behind; the looks at test recorded so far are always kept."""
    from refinery.core.torchrun import ProcessLayout
    from refinery.experiments.config import validate
    from refinery.experiments.runner import run_ablation
    from refinery.experiments.store import load_rows

    experiment = tune.experiment_for(limit=limit, only=only, model=model, device=device, batch_size=batch_size,
                                     score_workers=score_workers)
    validate(experiment, check_paths=True)  # before the protocol file is written
    out = Path(out_dir)
    old = read_protocol(out / PROTOCOL_FILE)
    if old is not None and old.get("config_sha256") != experiment.hash():
        raise ValueError(f"{out / PROTOCOL_FILE}: written by another tune protocol (config sha256 differs); "
                         "pass another --out directory")
    kept = _kept(tune, experiment)
    out.mkdir(parents=True, exist_ok=True)
    main_rank = ProcessLayout.from_env().is_main  # under torchrun rank 0 alone writes the protocol
    if main_rank:
        with _protocol_lock(out / PROTOCOL_FILE):  # the looks recorded so far stay
            looks = read_protocol(out / PROTOCOL_FILE) or {}
            write_json_atomic(out / PROTOCOL_FILE, protocol_record(kept, experiment, {}, {}, looks, limit))
    run_dir = run_ablation(experiment, out, progress=progress)
    rows = load_rows(run_dir)  # every rank's shard: under torchrun all ranks have finished by now
    scores = {e.label: trial_scores(e, rows) for e in kept.entries}
    winners = {e.label: select(e, scores[e.label], tune.select) for e in kept.entries}
    winners = {k: v for k, v in winners.items() if v}
    if not main_rank:  # rank 0 alone writes the winners, the protocol and the table
        return protocol_record(kept, experiment, scores, winners, read_protocol(run_dir / PROTOCOL_FILE) or {}, limit)
    if winners:
        (run_dir / WINNERS_FILE).write_text(
            f"# winners of the tune protocol {run_dir / PROTOCOL_FILE} (select: {tune.select}), on the test split.\n"
            f"# Every `refinery ablate` of this file is counted in that protocol's test_looks.\n"
            + yaml.dump(winners_config(kept, winners), Dumper=_PlainDumper, sort_keys=False))
    with _protocol_lock(run_dir / PROTOCOL_FILE):  # a look may have been recorded meanwhile: keep it
        looks = read_protocol(run_dir / PROTOCOL_FILE) or {}
        record = protocol_record(kept, experiment, scores, winners, looks, limit)
        write_json_atomic(run_dir / PROTOCOL_FILE, record)
    (run_dir / TABLE_FILE).write_text(trials_markdown(record, detail=True))
    return record


class _PlainDumper(yaml.SafeDumper):
    """safe_dump without anchors: a winner equal to its start is written out twice, readable on its own."""

    def ignore_aliases(self, data) -> bool:
        return True


def _kept(tune: TuneConfig, experiment: ExperimentConfig) -> TuneConfig:
    """The tune config restricted to the entries ``experiment`` still runs (after ``--only``)."""
    labels = {s.label for s in experiment.strategies}
    entries = tuple(e for e in tune.entries if e.trial_label(0) in labels)
    return dataclasses.replace(tune, entries=entries)


def trials_markdown(record: dict, detail: bool = False) -> str:
    """The trials-per-strategy table (strict accuracy in %); ``detail`` adds every trial's params and score."""
    rule = record["select"]
    lines = [f"Tuning protocol: {record['trials']} trials per entry, sampler {record['sampler']} (seed "
             f"{record['seed']}), select {rule} (ties: {record['tie_break']}), split dev, budgets "
             f"{', '.join(record['budgets'])}, test looks so far: {record['test_looks']}", "",
             "| entry | strategy | trials | space | start (t00) dev % | best dev % | winner |",
             "|---|---|---|---|---|---|---|"]
    for e in record["entries"]:
        scored = [t for t in e["trials"] if t["dev"] is not None]
        start = e["trials"][0]["dev"]
        best = max((t["dev"]["mean"] for t in scored), default=None)
        won = ", ".join(f"t{i:02d}" if b == "*" else f"{b}: t{i:02d}" for b, i in e["winners"].items()) or "-"
        space = "; ".join(f"{k} {v}" for k, v in e["space"].items())
        strategy = f"{e['strategy']} ({e['model']})" if e.get("model") else e["strategy"]
        lines.append(f"| {e['label']} | {strategy} | {len(scored)}/{len(e['trials'])} | {space} | "
                     f"{_pct(start and start['mean'])} | {_pct(best)} | {won} |")
    if detail:
        for e in record["entries"]:
            lines += ["", f"### {e['label']}", "", "| trial | params | dev % (mean) | per budget |",
                      "|---|---|---|---|"]
            for t in e["trials"]:
                shown = {k: v for k, v in t["params"].items() if k in e["space"] or k in e["start"]}
                dev = t["dev"]
                per = "" if dev is None else ", ".join(f"{b}: {_pct(v)}" for b, v in dev["per_budget"].items())
                lines.append(f"| t{t['trial']:02d} | {shown} | {_pct(t['dev'] and t['dev']['mean'])} | {per} |")
    return "\n".join(lines) + "\n"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


# ---- looks at test -----------------------------------------------------------------------------------------

def protocol_path(config: ExperimentConfig) -> Optional[Path]:
    """The protocol file a winners config names (relative to the config file), or None."""
    if not config.protocol:
        return None
    p = Path(config.protocol)
    return p if p.is_absolute() else Path(config.source).parent / p


def record_test_look(config: ExperimentConfig, out_dir: str | Path) -> int:
    """Count one run of a winners config on test in the protocol file it names -> the new count.

    Read-modify-write under an exclusive lock beside the file, replaced atomically, so two runs at once
    both count. A missing or foreign protocol file is refused: a look that cannot be recorded is not run."""
    path = protocol_path(config)
    if path is None:
        return 0
    if not path.is_file():
        raise FileNotFoundError(f"{config.source}: protocol: {path}: no such protocol file; a winners config's "
                                "looks at test are counted there")
    with _protocol_lock(path):
        record = read_protocol(path)
        if not isinstance(record, dict) or "test_looks" not in record:
            raise ValueError(f"{config.source}: protocol: {path} is not a tune protocol file")
        record["test_looks"] = int(record["test_looks"]) + 1
        record.setdefault("test_runs", []).append(dict(
            time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), out=str(out_dir),
            config=config.source, config_sha256=config.hash(),
            command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]))
        write_json_atomic(path, record)
        return record["test_looks"]


@contextlib.contextmanager
def _protocol_lock(path: Path):
    """Exclusive lock on a file beside the protocol (the protocol itself is replaced, so it cannot hold one)."""
    fd = os.open(path.with_name("." + path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
