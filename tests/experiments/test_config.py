"""Ablation config loading and validation: every shipped YAML validates; each mistake names file, key, reason."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import pytest

from refinery.experiments.config import ConfigError, config_from_dict, load_config, validate
from refinery.strategies import available_strategies

from ablation_helpers import small_config, write_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many tiny decodes: one thread is fastest

# *_tune.yaml files are tune protocols (refinery tune), checked in tests/experiments/test_tune.py
SHIPPED = sorted(p for p in (Path(__file__).resolve().parents[2] / "experiments" / "ablations").glob("*.yaml")
                 if not p.name.endswith("_tune.yaml"))


def test_there_are_shipped_configs():
    names = {p.name for p in SHIPPED}
    assert {"embedded_default.yaml", "llada8b_mask_baselines.yaml", "medlm_edit.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    config = load_config(path)
    missing = sorted({s.name for s in config.strategies} - set(available_strategies()))
    if missing:  # a strategy still being written (edit) cannot be checked until it is registered
        pytest.skip(f"strategies not registered yet: {missing}")
    validate(config, check_paths=False)
    assert config.hash() == load_config(path).hash()


# The strategies the main command compares (the field's five); a strategy registered later, such as the
# README's "Add a strategy" example, joins a YAML of its own instead of changing the main command's rows.
COMPARED = {"masked", "remdm", "conv", "threshold", "edit"}


def test_embedded_default_covers_every_registered_strategy_and_the_paper_budgets():
    config = load_config(SHIPPED[[p.name for p in SHIPPED].index("embedded_default.yaml")])
    assert {s.name for s in config.strategies} >= COMPARED and COMPARED <= set(available_strategies())
    assert config.budgets == ("1/1", "1/2", "1/4", "1/8")
    assert {t.name for t in config.tasks} == {"arith", "pycode"}
    assert all(t.split == "test" for t in config.tasks)


def test_medlm_config_has_the_paper_1_8_split():
    """ME-DLM's 1/8 setting at 512 tokens: 48 mask + 16 edit passes."""
    config = load_config(SHIPPED[[p.name for p in SHIPPED].index("medlm_edit.yaml")])
    assert config.gen_length == 512 and "1/8" in config.budgets
    edit = next(s for s in config.strategies if s.name == "edit" and "edit_passes" in s.params)
    assert 512 // 8 - edit.params["edit_passes"] == 48
    assert {t.name for t in config.tasks} == {"gsm8k", "math500", "humaneval", "mbpp"}


def test_sweep_expands_to_one_entry_per_grid_point(tmp_path):
    data = small_config(tmp_path, strategies=[
        {"name": "remdm", "label": "remdm-{schedule}-{eta}", "sweep": {"schedule": ["loop", "cap"],
                                                                       "eta": [0.02, 0.04]}},
        {"name": "masked", "sweep": {"block_length": [4, 8]}}])
    config = config_from_dict(data, source="x.yaml")
    labels = [s.label for s in config.strategies]
    assert labels == ["remdm-loop-0.02", "remdm-loop-0.04", "remdm-cap-0.02", "remdm-cap-0.04",
                      "masked[block_length=4]", "masked[block_length=8]"]
    assert config.strategies[1].params == {"schedule": "loop", "eta": 0.04}
    validate(config)
    # The resolved config reads back to the same config (what a run directory stores).
    assert config_from_dict(config.to_dict(), source="y.yaml") == config


def test_limit_caps_examples_and_changes_the_hash(tmp_path):
    config = config_from_dict(small_config(tmp_path), source="x.yaml")
    limited = config.with_overrides(limit=2)
    assert [t.n for t in limited.tasks] == [2]
    assert limited.hash() != config.hash()


def test_only_keeps_the_named_entries_and_names_unknown_labels():
    config = load_config(next(p for p in SHIPPED if p.name == "embedded_full.yaml"))
    kept = config.with_overrides(only=["edit", "masked"])
    assert [s.label for s in kept.strategies] == ["masked", "edit"]  # config order, not the order asked
    assert kept.hash() != config.hash() and kept.tasks == config.tasks
    with pytest.raises(ValueError, match=r"no strategy entry labelled 'remdm'.*remdm-loop"):
        config.with_overrides(only=["masked", "remdm"])



def test_budgets_keeps_the_cells_at_those_budgets_and_names_unknown_ones():
    config = load_config(next(p for p in SHIPPED if p.name == "embedded_full.yaml"))
    config = dataclasses.replace(config, strategies=(
        dataclasses.replace(config.strategies[0], budgets=("1/1", "1/8")),  # its own list: cut to what is kept
        dataclasses.replace(config.strategies[1], budgets=("1/1",)),       # none of its budgets kept: dropped
        *config.strategies[2:]))
    kept = config.with_overrides(budgets=["0.125", "1/2"])
    assert kept.budgets == ("1/2", "1/8")  # the file's order, canonical spelling
    assert kept.strategies[0].budgets == ("1/8",)
    assert [s.label for s in kept.strategies] == [config.strategies[0].label] + [s.label for s in config.strategies[2:]]
    for bad, why in ((["1/3"], "runs no cell at 1/3"), (["x"], "--budgets x: budget 'x'"), ([], "no budget")):
        with pytest.raises(ValueError, match=why):
            config.with_overrides(budgets=bad)

def _error(tmp_path, data=None, text=None, check_paths=False) -> ConfigError:
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    else:
        write_yaml(path, data)
    with pytest.raises(ConfigError) as info:
        validate(load_config(path), check_paths=check_paths)
    assert str(path) in str(info.value)
    return info.value


def _with_strategy(tmp_path, entry, **kw):
    return small_config(tmp_path, strategies=[{"name": "masked"}, entry], **kw)


@pytest.mark.parametrize("change, key, reason", [
    (lambda d: d.update(gen_lenght=16), "gen_lenght", "unknown key"),
    (lambda d: d["strategies"][1].update(parms={}), "strategies[1].parms", "unknown key"),
    (lambda d: d["strategies"].append({"name": "maskd"}), "strategies[2].name", "Did you mean 'masked'"),
    (lambda d: d["strategies"][1]["params"].update(temprature=1.0), "strategies[1].params.temprature",
     "unknown parameter"),
    (lambda d: d["strategies"][1]["params"].update(temperature="hot"), "strategies[1].params.temperature",
     "expected a number"),
    (lambda d: d["strategies"][1]["params"].update(remasking="best"), "strategies[1].params.remasking",
     "not one of"),
    (lambda d: d["strategies"][1]["params"].update(block_length=5), "strategies[1].params.block_length",
     "must divide gen_length=16"),
    (lambda d: d["strategies"][1].update(sweep={"block_length": [4, 6]}), "strategies[1].sweep.block_length",
     "must divide"),
    (lambda d: d.update(budgets=["1/1", "one half"]), "budgets[1]", "not a fraction"),
    (lambda d: d.update(budgets=["1/1", "3/2"]), "budgets[1]", "must lie in (0, 1]"),
    (lambda d: (d["strategies"][1]["params"].update(block_length=4), d.update(budgets=["1/1", "1/8"])),
     "budgets[1]", "needs at least 4"),
    (lambda d: d["strategies"][1].update(budgets=["1/16"], params={"block_length": 8}),
     "strategies[1].budgets[0]", "needs at least 2"),
    (lambda d: d["tasks"].append({"name": "arithmetic"}), "tasks[1].name", "Unknown task 'arithmetic'"),
    (lambda d: d["tasks"][0].update(kwargs={"no_such_knob": 1}), "tasks[0].kwargs.no_such_knob", "no argument"),
    (lambda d: d["tasks"].append({"name": "arith"}), "tasks[1].name", "listed twice"),
    (lambda d: d["strategies"].append({"name": "masked", "label": "masked"}), "strategies[2].label",
     "used twice"),
    (lambda d: d.update(batch_size=0), "batch_size", "must be >= 1"),
    (lambda d: d.update(dtype="fp8"), "dtype", "not one of"),
    (lambda d: d.pop("budgets"), "budgets", "required key is missing"),
])
def test_each_mistake_names_file_key_and_reason(tmp_path, change, key, reason):
    data = small_config(tmp_path)
    data["strategies"][1].setdefault("params", {})
    change(data)
    err = _error(tmp_path, data)
    assert err.key == key, str(err)
    assert reason in err.reason, str(err)
    assert f": {key}: " in str(err)


def test_no_code_runs_from_yaml(tmp_path):
    err = _error(tmp_path, text="name: !!python/object/apply:os.system ['echo pwned']\n")
    assert "not valid YAML" in str(err)


def test_edit_needs_a_model_with_next_token_head(tmp_path, tiny_checkpoint_no_next, tiny_checkpoint):
    if "edit" not in available_strategies():
        pytest.skip("edit strategy not registered yet")
    data = small_config(tiny_checkpoint_no_next, strategies=[{"name": "masked"}, {"name": "edit"}])
    err = _error(tmp_path, data, check_paths=True)
    assert err.key == "strategies[1].name" and "next-token head" in err.reason
    validate(config_from_dict(small_config(tiny_checkpoint, strategies=[{"name": "edit"}])), check_paths=True)


def test_paths_are_checked_only_when_asked(tmp_path):
    data = small_config(tmp_path / "no_model_here")
    validate(config_from_dict(data, source="x.yaml"), check_paths=False)
    err = _error(tmp_path, data, check_paths=True)
    assert err.key == "model" and "no checkpoint here" in err.reason
    data = small_config(tmp_path / "no_model_here", tasks=[{"name": "gsm8k", "kwargs": {"data_dir": "/nope/x"}}])
    err = _error(tmp_path, data, check_paths=True)
    assert err.key == "tasks[0].kwargs.data_dir"


def test_a_preset_entry_resolves_its_params_and_overrides_win():
    cfg = config_from_dict({"tasks": ["arith"], "budgets": ["1/2"], "gen_length": 32, "batch_size": 2,
                            "strategies": [{"name": "remdm", "preset": "paper-rescale", "params": {"eta": 0.03}},
                                           {"name": "masked", "preset": "paper", "sweep": {"block_length": [8, 16]}},
                                           {"name": "remdm", "preset": "paper"}]})
    first, *swept, loop = cfg.strategies
    assert first.label == "remdm-paper-rescale" and first.preset == "paper-rescale"
    assert first.params["schedule"] == "rescale" and first.params["eta"] == 0.03 and first.params["top_p"] == 0.9
    assert [s.params["block_length"] for s in swept] == [8, 16] and all(s.params["bans"] == "none" for s in swept)
    assert loop.params["eta"] == 0.02
    validate(cfg)
    again = config_from_dict(cfg.to_dict())  # the resolved config reads back to the same entries
    assert again.hash() == cfg.hash() and again.strategies[0].preset == "paper-rescale"


@pytest.mark.parametrize("entry,key,reason", [
    ({"name": "masked", "preset": "papr"}, "strategies[0].preset", "Did you mean 'paper'"),
    ({"name": "maskd", "preset": "paper"}, "strategies[0].name", "Unknown strategy 'maskd'"),
    ({"name": "masked", "preset": 3}, "strategies[0].preset", "expected"),
])
def test_a_bad_preset_names_file_key_and_reason(entry, key, reason):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"tasks": ["arith"], "budgets": ["1/2"], "gen_length": 32, "batch_size": 2,
                          "strategies": [entry]}, source="x.yaml")
    assert e.value.source == "x.yaml" and e.value.key == key and reason in e.value.reason


def test_a_preset_value_that_cannot_run_points_at_the_preset():
    # LLaDA refuses 12 steps over 8 blocks: the preset set uneven_steps, the entry only the block length
    cfg = config_from_dict({"tasks": ["arith"], "budgets": ["3/8"], "gen_length": 32, "batch_size": 2,
                            "strategies": [{"name": "masked", "preset": "paper", "params": {"block_length": 4}}]},
                           source="x.yaml")
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.key.startswith("strategies[0].preset") and "uneven_steps" in str(e.value)
