"""``refinery tune``: search spaces, samplers, the protocol config, selection, and the run end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from refinery.experiments.config import ConfigError, config_from_dict, load_config
from refinery.experiments.search import SpaceError, parse_space, sample_trials
from refinery.experiments.tune import load_tune, select, trial_scores, tune_from_dict
from refinery.cli import main

from ablation_helpers import small_config, write_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many tiny decodes: one thread is fastest


def tune_dict(model, **overrides) -> dict:
    """2 entries x 3 trials x 2 budgets on 2 dev arith problems: the smallest protocol with a choice to make."""
    cfg = small_config(model, name="tiny_tune")
    cfg.update(
        protocol={"trials": 3, "sampler": "random", "seed": 0, "select": "mean"},
        tasks=[{"name": "arith", "n": 2, "split": "dev", "seed": 0}],
        strategies=[
            {"name": "masked", "label": "masked", "params": {"remasking": "low_confidence"},
             "space": {"remasking": ["low_confidence", "random"], "block_length": [None, 8]}},
            {"name": "threshold", "label": "threshold", "params": {"threshold": 0.9},
             "space": {"threshold": {"low": 0.5, "high": 0.99}}},
        ])
    cfg.update(overrides)
    return cfg


def _canon(params: dict) -> str:
    if params.get("block_length") == 5:
        raise ValueError("block_length=5 does not divide 16")
    return json.dumps(params, sort_keys=True)


# ---- spaces and samplers --------------------------------------------------------------------------------

def test_random_sampler_gives_n_distinct_settings_start_first_and_is_seeded():
    dims = parse_space({"eta": {"low": 0.005, "high": 0.08, "log": True}, "window": {"low": 4, "high": 64},
                        "schedule": ["loop", "cap"]})
    start = {"eta": 0.04, "window": 32, "schedule": "loop"}
    a = sample_trials(dims, start, 10, "random", 0, "remdm", _canon)
    assert a[0] == start and len(a) == 10 and len({_canon(p) for p in a}) == 10
    assert all(0.005 <= p["eta"] <= 0.08 and isinstance(p["window"], int) and 4 <= p["window"] <= 64 for p in a)
    assert a == sample_trials(dims, start, 10, "random", 0, "remdm", _canon)
    assert a != sample_trials(dims, start, 10, "random", 1, "remdm", _canon)
    assert a != sample_trials(dims, start, 10, "random", 0, "other-label", _canon)


def test_random_sampler_redraws_settings_that_cannot_run_and_refuses_a_too_small_space():
    dims = parse_space({"block_length": [None, 5, 8, 16]})
    got = sample_trials(dims, {"block_length": None}, 3, "random", 0, "m", _canon)
    assert sorted(map(str, (p["block_length"] for p in got))) == ["16", "8", "None"]
    with pytest.raises(SpaceError, match="found only 3 distinct runnable settings"):
        sample_trials(dims, {"block_length": None}, 4, "random", 0, "m", _canon)


def test_grid_sampler_needs_exactly_n_points_besides_the_start():
    dims = parse_space({"remasking": ["low_confidence", "random"], "block_length": [None, 8]})
    start = {"remasking": "low_confidence", "block_length": None}  # a grid point: 3 others
    got = sample_trials(dims, start, 4, "grid", 0, "m", _canon)
    assert got[0] == start and len(got) == 4 and len({_canon(p) for p in got}) == 4
    with pytest.raises(SpaceError, match="the grid has 3 settings besides the start, but trials: 5"):
        sample_trials(dims, start, 5, "grid", 0, "m", _canon)
    with pytest.raises(SpaceError, match="needs 'grid: K'"):
        sample_trials(parse_space({"eta": {"low": 0.1, "high": 0.2}}), {}, 3, "grid", 0, "m", _canon)
    log_grid = parse_space({"eta": {"low": 0.01, "high": 1.0, "log": True, "grid": 3}})[0].points()
    assert log_grid == (0.01, 0.1, 1.0)
    with pytest.raises(SpaceError, match="block_length=5"):
        sample_trials(parse_space({"block_length": [5, 8]}), {}, 3, "grid", 0, "m", _canon)


@pytest.mark.parametrize("space, key", [
    ({}, "space"), ({"eta": []}, "space.eta"), ({"eta": {"low": 1.0}}, "space.eta.high"),
    ({"eta": {"low": 2, "high": 1}}, "space.eta"), ({"eta": {"low": 0, "high": 1, "log": True}}, "space.eta.low"),
    ({"eta": {"low": 0, "high": 1, "step": 2}}, "space.eta.step"), ({"eta": [1, 1]}, "space.eta"),
])
def test_bad_spaces_name_their_key(space, key):
    with pytest.raises(SpaceError) as e:
        parse_space(space)
    assert e.value.key == key


# ---- the protocol config ----------------------------------------------------------------------------------

def test_trials_expand_into_one_ablation_of_ordinary_entries(tiny_checkpoint):
    tune = tune_from_dict(tune_dict(tiny_checkpoint), source="t.yaml")
    labels = [s.label for s in tune.experiment.strategies]
    assert labels == ["masked/t00", "masked/t01", "masked/t02", "threshold/t00", "threshold/t01", "threshold/t02"]
    assert dict(tune.experiment.strategies[0].params) == {"remasking": "low_confidence"}
    assert all(t.split == "dev" for t in tune.experiment.tasks)
    assert [len(e.trials) for e in tune.entries] == [3, 3]
    only = tune.experiment_for(only=["threshold"], limit=1)
    assert [s.label for s in only.strategies] == ["threshold/t00", "threshold/t01", "threshold/t02"]
    with pytest.raises(ValueError, match="no strategy entry labelled 'edit'"):
        tune.experiment_for(only=["edit"])


@pytest.mark.parametrize("change, key, reason", [
    (lambda d: d["tasks"][0].update(split="test"), "tasks[0].split", "dev split only"),
    (lambda d: d["tasks"][0].pop("split"), "tasks[0].split", "dev split only"),
    (lambda d: d.pop("protocol"), "protocol", "required mapping"),
    (lambda d: d["protocol"].pop("select"), "protocol.select", "required key is missing"),
    (lambda d: d["protocol"].update(select="best"), "protocol.select", "not one of"),
    (lambda d: d["protocol"].update(sampler="sobol"), "protocol.sampler", "not one of"),
    (lambda d: d["protocol"].pop("seed"), "protocol.seed", "needs a declared seed"),
    (lambda d: d["strategies"][1].pop("space"), "strategies[1].space", "declares a search space"),
    (lambda d: d["strategies"][0].update(sweep={"temperature": [0.0]}), "strategies[0].sweep", "searches its space"),
    (lambda d: d["strategies"][0].update(preset="nope"), "strategies[0].preset", "nope"),
    (lambda d: d["strategies"][0]["space"].update(colour=["red"]), "strategies[0].space.colour",
     "unknown parameter"),
    (lambda d: d.update(test_tasks=[{"name": "arith", "split": "dev"}]), "test_tasks[0].split", "test split"),
    (lambda d: d["protocol"].update(sampler="grid"), "strategies[0].space", "the grid has 3 settings besides"),
])
def test_bad_tune_configs_name_file_and_key(tiny_checkpoint, change, key, reason):
    data = tune_dict(tiny_checkpoint)
    change(data)
    with pytest.raises(ConfigError) as e:
        tune_from_dict(data, source="t.yaml")
    assert e.value.source == "t.yaml" and e.value.key == key and reason in e.value.reason


def test_a_preset_is_the_start_and_written_params_override_it(tiny_checkpoint, monkeypatch):
    from refinery.strategies.base import Preset
    from refinery.strategies.registry import strategy_class

    cls = strategy_class("threshold")
    monkeypatch.setattr(cls, "presets", {**cls.presets, "paper": Preset({"threshold": 0.9, "block_length": 8}, "t")})
    data = tune_dict(tiny_checkpoint)
    data["strategies"][1].update(preset="paper", params={"threshold": 0.7})
    entry = tune_from_dict(data, source="t.yaml").entries[1]
    assert entry.preset == "paper" and entry.trials[0] == {"threshold": 0.7, "block_length": 8}
    assert all(t["block_length"] == 8 for t in entry.trials)


def test_the_protocol_key_does_not_change_a_configs_hash(tiny_checkpoint):
    plain = config_from_dict(small_config(tiny_checkpoint))
    named = config_from_dict(dict(small_config(tiny_checkpoint), protocol="protocol.json"))
    assert named.protocol == "protocol.json" and plain.protocol is None and named.hash() == plain.hash()


# ---- selection ----------------------------------------------------------------------------------------------

def _rows(label: str, correct: dict) -> list[dict]:
    """``correct``: (task, budget) -> list of verdicts."""
    return [dict(label=label, task=t, budget=b, correct=c) for (t, b), cs in correct.items() for c in cs]


def test_selection_mean_and_per_budget_with_ties_to_the_lowest_trial(tiny_checkpoint):
    entry = tune_from_dict(tune_dict(tiny_checkpoint), source="t.yaml").entries[0]
    rows = (_rows("masked/t00", {("arith", "1/1"): [1, 1], ("arith", "1/4"): [0, 0]})     # mean 1/2
            + _rows("masked/t01", {("arith", "1/1"): [1, 0], ("arith", "1/4"): [1, 0]})   # mean 1/2, ties t00
            + _rows("masked/t02", {("arith", "1/1"): [0, 0], ("arith", "1/4"): [1, 1]}))  # mean 1/2
    scores = trial_scores(entry, rows)
    assert [float(s["mean"]) for s in scores] == [0.5, 0.5, 0.5]
    assert select(entry, scores, "mean") == {"*": 0}
    assert select(entry, scores, "per_budget") == {"1/1": 0, "1/4": 2}
    rows[-1]["correct"] = 0  # t02 drops to 1/4 mean; at 1/4 it still ties t01 at 1/2: the lower index wins
    assert select(entry, trial_scores(entry, rows), "per_budget") == {"1/1": 0, "1/4": 1}
    better = rows + _rows("other", {("arith", "1/1"): [1]})
    assert select(entry, trial_scores(entry, better[:4] + _rows("masked/t01", {("arith", "1/1"): [1, 1]})
                                      + better[4:]), "mean") == {"*": 1}
    assert select(entry, [None, None, None], "mean") == {}


def test_a_grid_protocol_runs_exactly_its_grid(tiny_checkpoint):
    data = tune_dict(tiny_checkpoint, protocol={"trials": 4, "sampler": "grid", "select": "mean"})
    data["strategies"][1]["space"] = {"threshold": {"low": 0.6, "high": 0.8, "grid": 3}}
    tune = tune_from_dict(data, source="t.yaml")
    assert [t["threshold"] for t in tune.entries[1].trials] == [0.9, 0.6, 0.7, 0.8]
    assert len({json.dumps(t, sort_keys=True) for t in tune.entries[0].trials}) == 4


def test_per_budget_winners_become_one_entry_per_winning_trial_at_the_budgets_it_won(tiny_checkpoint):
    from refinery.experiments.tune import winners_config

    data = tune_dict(tiny_checkpoint, protocol={"trials": 3, "sampler": "random", "seed": 0, "select": "per_budget"})
    tune = tune_from_dict(data, source="t.yaml")
    cfg = winners_config(tune, {"masked": {"1/1": 2, "1/4": 2}, "threshold": {"1/1": 0, "1/4": 1}})
    got = [(s["label"], s.get("budgets"), s["params"]) for s in cfg["strategies"]]
    m, t = tune.entries
    assert got == [("masked/start", None, m.trials[0]), ("masked/t02", ["1/1", "1/4"], m.trials[2]),
                   ("threshold/start", None, t.trials[0]), ("threshold/t00", ["1/1"], t.trials[0]),
                   ("threshold/t01", ["1/4"], t.trials[1])]
    assert cfg["protocol"] == "protocol.json" and [x["split"] for x in cfg["tasks"]] == ["test"]
    winners = config_from_dict(cfg, source="w.yaml")  # an ordinary ablation config
    assert winners.budgets_for(winners.strategies[3]) == ("1/1",)


# ---- end to end ------------------------------------------------------------------------------------------------

def test_tune_then_ablate_the_winners_counts_every_look(tmp_path, tiny_checkpoint, capsys):
    cfg = write_yaml(tmp_path / "tune.yaml", tune_dict(tiny_checkpoint))
    run = tmp_path / "run"
    assert main(["tune", str(cfg), "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| masked | masked | 3/3 |" in out and "| threshold | threshold | 3/3 |" in out
    protocol = json.loads((run / "protocol.json").read_text())
    assert protocol["trials"] == 3 and protocol["sampler"] == "random" and protocol["select"] == "mean"
    assert protocol["test_looks"] == 0 and protocol["split"] == "dev"
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 2 * 2 and {r["split"] for r in rows} == {"dev"}
    for e in protocol["entries"]:
        assert [t["trial"] for t in e["trials"]] == [0, 1, 2] and all(t["dev"] is not None for t in e["trials"])
        best = max(t["dev"]["mean"] for t in e["trials"])
        won = e["winners"]["*"]
        assert e["trials"][won]["dev"]["mean"] == best
        assert won == min(t["trial"] for t in e["trials"] if t["dev"]["mean"] == best)
        mine = [r for r in rows if r["label"] == e["trials"][1]["label"]]
        assert e["trials"][1]["dev"]["mean"] == pytest.approx(sum(r["correct"] for r in mine) / len(mine))
    assert "### masked" in (run / "trials.md").read_text()

    assert "&id" not in (run / "winners.yaml").read_text()  # no YAML anchors, even where a start won
    winners = load_config(run / "winners.yaml")
    assert winners.protocol == "protocol.json" and {t.split for t in winners.tasks} == {"test"}
    by_label = {s.label: dict(s.params) for s in winners.strategies}
    assert len(by_label) == 2 * len(protocol["entries"])  # the untuned start beside every winner
    for e in protocol["entries"]:
        assert by_label[e["label"]] == e["trials"][e["winners"]["*"]]["params"]
        assert by_label[e["label"] + "/start"] == e["trials"][0]["params"]
    for look in (1, 2):
        assert main(["ablate", str(run / "winners.yaml"), "--out", str(tmp_path / "test"), "--no-progress"]) == 0
        assert f"test look {look} " in capsys.readouterr().out
        assert json.loads((run / "protocol.json").read_text())["test_looks"] == look
    assert len(json.loads((run / "protocol.json").read_text())["test_runs"]) == 2

    n_rows = len(rows)  # a second tune resumes: nothing recomputed, the looks are kept
    assert main(["tune", str(cfg), "--out", str(run), "--no-progress"]) == 0
    assert len((run / "rows.jsonl").read_text().splitlines()) == n_rows
    assert json.loads((run / "protocol.json").read_text())["test_looks"] == 2


def test_looks_recorded_at_once_are_all_counted(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from refinery.experiments.tune import record_test_look

    (tmp_path / "protocol.json").write_text(json.dumps({"test_looks": 0}))
    cfg = write_yaml(tmp_path / "winners.yaml", dict(small_config(tmp_path / "m"), protocol="protocol.json"))
    config = load_config(cfg)
    with ThreadPoolExecutor(8) as pool:
        counts = sorted(pool.map(lambda _: record_test_look(config, "out"), range(16)))
    assert counts == list(range(1, 17))
    record = json.loads((tmp_path / "protocol.json").read_text())
    assert record["test_looks"] == 16 and len(record["test_runs"]) == 16
    (tmp_path / "protocol.json").write_text(json.dumps({"trials": 3}))
    with pytest.raises(ValueError, match="is not a tune protocol file"):
        record_test_look(config, "out")


def test_ablate_refuses_a_winners_config_whose_protocol_is_missing(tmp_path, tiny_checkpoint, capsys):
    cfg = write_yaml(tmp_path / "w.yaml", dict(small_config(tiny_checkpoint), protocol="gone/protocol.json"))
    assert main(["ablate", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "protocol" in err and "gone/protocol.json" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_tune_cli_validate_only_help_and_bad_split(tmp_path, tiny_checkpoint, capsys):
    cfg = write_yaml(tmp_path / "tune.yaml", tune_dict(tiny_checkpoint))
    assert main(["tune", str(cfg), "--validate-only"]) == 0
    assert "2 strategy entries x 3 trials (random)" in capsys.readouterr().out
    bad = tune_dict(tiny_checkpoint)
    bad["tasks"][0]["split"] = "test"
    assert main(["tune", str(write_yaml(tmp_path / "bad.yaml", bad)), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("refinery tune: error: ") and "tasks[0].split" in err and "\n" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    assert "test_looks" in capsys.readouterr().out


SHIPPED_TUNE = sorted((Path(__file__).resolve().parents[2] / "experiments" / "ablations").glob("*_tune.yaml"))


@pytest.mark.parametrize("path", SHIPPED_TUNE, ids=lambda p: p.name)
def test_shipped_tune_configs_validate(path):
    from refinery.experiments.config import validate

    tune = load_tune(path)
    validate(tune.experiment, check_paths=False)
    assert {len(e.trials) for e in tune.entries} == {tune.trials}
    assert tune.experiment.hash() == load_tune(path).experiment.hash()  # the trials are drawn reproducibly


def test_the_shipped_tune_config_gives_every_entry_the_same_trials():
    path = Path(__file__).resolve().parents[2] / "experiments" / "ablations" / "embedded_tune.yaml"
    assert path in SHIPPED_TUNE
    tune = load_tune(path)
    assert {e.label for e in tune.entries} == {"masked", "remdm", "conv", "threshold", "edit", "conv-r2ft",
                                              "masked-r2ft", "edit-medlm"}
    assert {len(e.trials) for e in tune.entries} == {tune.trials} and tune.trials == 8
    assert all(t.split == "dev" for t in tune.experiment.tasks)
    assert yaml.safe_load(path.read_text())["protocol"]["sampler"] == "random"


def _torchrun(args: list[str], cwd: Path) -> str:
    """``torchrun --standalone --nproc-per-node 2 -m refinery ARGS`` on CPU (gloo)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "refinery", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_tune_and_its_test_look_under_torchrun_match_one_process(tmp_path, tiny_checkpoint, capsys):
    cfg = write_yaml(tmp_path / "tune.yaml", tune_dict(tiny_checkpoint))
    assert main(["tune", str(cfg), "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    capsys.readouterr()
    out = _torchrun(["tune", str(cfg), "--out", str(tmp_path / "two"), "--no-progress"], tmp_path)
    assert out.count("| masked | masked | 3/3 |") == 1  # one table, from rank 0
    assert sorted(p.name for p in (tmp_path / "two").glob("rows*.jsonl")) == ["rows.rank0.jsonl", "rows.rank1.jsonl"]
    one, two = (json.loads((tmp_path / d / "protocol.json").read_text()) for d in ("one", "two"))
    assert two["entries"] == one["entries"] and two["config_sha256"] == one["config_sha256"]
    assert (tmp_path / "two" / "winners.yaml").read_text().replace("two", "one") == \
        (tmp_path / "one" / "winners.yaml").read_text()
    _torchrun(["ablate", str(tmp_path / "two" / "winners.yaml"), "--out", str(tmp_path / "test"), "--no-progress"],
              tmp_path)
    assert json.loads((tmp_path / "two" / "protocol.json").read_text())["test_looks"] == 1  # not one per rank


def test_plan_prints_the_drawn_trials_without_a_checkpoint(tmp_path, tiny_checkpoint, capsys):
    cfg = write_yaml(tmp_path / "tune.yaml", tune_dict(str(tmp_path / "no-model-here")))
    assert main(["tune", str(cfg), "--validate-only"]) == 2  # the paths are checked there
    capsys.readouterr()
    assert main(["tune", str(cfg), "--plan"]) == 0
    out = capsys.readouterr().out
    drawn = load_tune(cfg)
    assert "| masked | masked | 0/3 |" in out and "| threshold | threshold | 0/3 |" in out
    for e in drawn.entries:  # every trial the run would use, in order, with the values its space drew
        section = out.split(f"### {e.label}\n")[1].split("###")[0]
        lines = [line for line in section.splitlines() if re.match(r"\| t\d\d \|", line)]
        assert len(lines) == len(e.trials) == 3
        for i, (line, params) in enumerate(zip(lines, e.trials)):
            assert line.startswith(f"| t{i:02d} | ")
            assert all(f"'{d.name}': {params[d.name]!r}" in line for d in e.dims if d.name in params)
            assert i == 0 or all(d.name in params for d in e.dims)  # the start sets only what it names
    assert not (tmp_path / "runs").exists()
