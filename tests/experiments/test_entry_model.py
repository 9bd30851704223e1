"""A strategy entry's own ``model:``: parsed, validated per entry, loaded once, recorded on its rows."""

from __future__ import annotations

import json

import pytest
import torch

from refinery.experiments.config import ConfigError, config_from_dict, load_config, validate
from refinery.experiments.runner import run_ablation
from refinery.experiments.store import load_rows
from refinery.experiments.tune import load_tune, tune_from_dict, winners_config
from refinery.cli import main

from ablation_helpers import small_config, write_yaml
from test_tune import tune_dict
from tiny_models import save_tiny_checkpoint, single_thread

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many tiny decodes: one thread is fastest

CONTENT = ("output", "correct", "nfe", "extracted", "error", "draft_output", "params")


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory):
    """A second tiny checkpoint with the same tokenizer and other weights."""
    from refinery.core.model import LLaDAModel

    path = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "other")
    with single_thread():
        model = LLaDAModel.from_pretrained(path)
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.save_pretrained(path)
    return path


def two_model_config(model, other) -> dict:
    return small_config(model, strategies=[
        {"name": "masked", "label": "masked", "params": {"remasking": "low_confidence"}},
        {"name": "masked", "label": "masked-other", "model": str(other), "params": {"remasking": "low_confidence"}}])


def test_entry_model_parses_and_only_entries_that_set_it_carry_it(tiny_checkpoint, other_checkpoint):
    cfg = config_from_dict(two_model_config(tiny_checkpoint, other_checkpoint), source="m.yaml")
    a, b = cfg.strategies
    assert (a.model, b.model) == (None, str(other_checkpoint))
    assert cfg.model_for(a) == str(tiny_checkpoint) and cfg.model_for(b) == str(other_checkpoint)
    assert cfg.models() == (str(tiny_checkpoint), str(other_checkpoint))
    entries = cfg.to_dict()["strategies"]
    assert "model" not in entries[0] and entries[1]["model"] == str(other_checkpoint)
    assert config_from_dict(cfg.to_dict(), source="again").hash() == cfg.hash()  # round-trips
    plain = config_from_dict(small_config(tiny_checkpoint), source="p.yaml")  # no per-entry model: as before
    assert all("model" not in s for s in plain.to_dict()["strategies"])
    with pytest.raises(ConfigError, match=r"strategies\[1\]\.model: expected text, got 3"):
        bad = two_model_config(tiny_checkpoint, other_checkpoint)
        bad["strategies"][1]["model"] = 3
        config_from_dict(bad, source="m.yaml")
    # --model replaces the file's model only; an entry that names its own keeps it
    over = cfg.with_overrides(model="elsewhere")
    assert over.model_for(over.strategies[0]) == "elsewhere"
    assert over.model_for(over.strategies[1]) == str(other_checkpoint)


def test_each_entry_decodes_with_its_model_loaded_once(tmp_path, tiny_checkpoint, other_checkpoint, monkeypatch):
    import refinery.experiments.runner as runner

    loads = []
    real = runner.load_model_for
    monkeypatch.setattr(runner, "load_model_for", lambda config, shard, model=None: loads.append(model)
                        or real(config, shard, model=model))
    data = two_model_config(tiny_checkpoint, other_checkpoint)
    data["strategies"].append({"name": "masked", "label": "masked-again", "model": f"{tiny_checkpoint}/",
                               "params": {"remasking": "low_confidence"}})  # another name of the file's model
    rows = load_rows(run_ablation(config_from_dict(data, source="m.yaml"), tmp_path / "mixed", progress=False))
    assert sorted(loads) == sorted([str(tiny_checkpoint), str(other_checkpoint)])  # each once, not per cell
    again = [r for r in rows if r["label"] == "masked-again"]
    assert {r["model"] for r in again} == {f"{tiny_checkpoint}/"}  # the name it was given differs: recorded
    mixed = [r for r in rows if r["label"] != "masked-again"]
    assert [r["output"] for r in again] == [r["output"] for r in mixed if r["label"] == "masked"]
    alone = {}  # each entry run alone, as the file's model
    for label, path in (("masked", tiny_checkpoint), ("masked-other", other_checkpoint)):
        single = small_config(path, strategies=[{"name": "masked", "label": label,
                                                 "params": {"remasking": "low_confidence"}}])
        rows = load_rows(run_ablation(config_from_dict(single, source=f"{label}.yaml"), tmp_path / label,
                                      progress=False))
        alone.update({r["key"]: r for r in rows})
    assert len(alone) == len(mixed)
    for r in mixed:
        which = "other" if r["label"] == "masked-other" else "tiny"
        ref = alone[r["key"]]
        assert {k: r[k] for k in CONTENT} == {k: ref[k] for k in CONTENT}
        assert r.get("model") == (str(other_checkpoint) if which == "other" else None)
        assert ("model" in r) == (which == "other")
    outputs = {lab: [r["output"] for r in mixed if r["label"] == lab] for lab in ("masked", "masked-other")}
    assert outputs["masked"] != outputs["masked-other"]  # the two checkpoints really differ


def test_validation_checks_each_entrys_own_model(tmp_path, tiny_checkpoint, tiny_checkpoint_no_next):
    edit = {"name": "edit", "label": "edit", "params": {"edit_passes": 1}}
    needs_head = small_config(tiny_checkpoint, strategies=[
        {"name": "masked", "label": "masked"}, dict(edit, model=str(tiny_checkpoint_no_next))])
    with pytest.raises(ConfigError) as e:
        validate(config_from_dict(needs_head, source="h.yaml"), check_paths=True)
    assert e.value.key == "strategies[1].name" and str(tiny_checkpoint_no_next) in e.value.reason
    assert "next-token head" in e.value.reason
    # the file's model lacks the head, but the edit entry brings its own: fine
    ok = small_config(tiny_checkpoint_no_next, strategies=[
        {"name": "masked", "label": "masked"}, dict(edit, model=str(tiny_checkpoint))])
    validate(config_from_dict(ok, source="ok.yaml"), check_paths=True)
    missing = small_config(tiny_checkpoint, strategies=[{"name": "masked", "label": "m", "model": str(tmp_path)}])
    with pytest.raises(ConfigError) as e:
        validate(config_from_dict(missing, source="x.yaml"), check_paths=True)
    assert e.value.key == "strategies[0].model" and "no checkpoint here" in e.value.reason


def test_a_changed_entry_model_is_refused_and_a_new_entry_extends(tmp_path, tiny_checkpoint, other_checkpoint,
                                                                   capsys):
    one = small_config(tiny_checkpoint, strategies=[{"name": "masked", "label": "masked"}], tasks=[
        {"name": "arith", "n": 2, "split": "test", "seed": 0}], budgets=["1/1"])
    out = tmp_path / "run"
    assert main(["ablate", str(write_yaml(tmp_path / "a.yaml", one)), "--out", str(out), "--no-progress"]) == 0
    moved = dict(one, strategies=[{"name": "masked", "label": "masked", "model": str(other_checkpoint)}])
    capsys.readouterr()
    assert main(["ablate", str(write_yaml(tmp_path / "b.yaml", moved)), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "masked.model" in err and str(other_checkpoint) in err
    grown = dict(one, strategies=one["strategies"] + [{"name": "masked", "label": "masked-o",
                                                       "model": str(other_checkpoint)}])
    assert main(["ablate", str(write_yaml(tmp_path / "c.yaml", grown)), "--out", str(out), "--no-progress"]) == 0
    rows = load_rows(out)
    assert sorted((r["label"], r.get("model")) for r in rows) == \
        [("masked", None)] * 2 + [("masked-o", str(other_checkpoint))] * 2
    stored = load_config(out / "config.yaml")  # the union config names the entry's model
    assert stored.model_for(stored.strategies[1]) == str(other_checkpoint)


def test_tune_entries_keep_their_model_through_trials_and_winners(tiny_checkpoint, other_checkpoint):
    data = tune_dict(tiny_checkpoint)
    data["strategies"][1]["model"] = str(other_checkpoint)
    tune = tune_from_dict(data, source="t.yaml")
    models = {s.label: tune.experiment.model_for(s) for s in tune.experiment.strategies}
    assert {models[f"masked/t0{i}"] for i in range(3)} == {str(tiny_checkpoint)}
    assert {models[f"threshold/t0{i}"] for i in range(3)} == {str(other_checkpoint)}
    cfg = config_from_dict(winners_config(tune, {"masked": {"*": 1}, "threshold": {"*": 2}}), source="w.yaml")
    got = {s.label: (cfg.model_for(s), dict(s.params)) for s in cfg.strategies}
    m, t = tune.entries
    assert got == {"masked/start": (str(tiny_checkpoint), m.trials[0]), "masked": (str(tiny_checkpoint), m.trials[1]),
                   "threshold/start": (str(other_checkpoint), t.trials[0]),
                   "threshold": (str(other_checkpoint), t.trials[2])}


@pytest.mark.parametrize("name, params", [
    ("masked", {"remasking": "random", "temperature": 1.0}), ("remdm", {"eta": 0.04, "temperature": 1.0}),
    ("conv", {"variant": "stochastic", "temperature": 1.0}), ("threshold", {"threshold": 0.5}),
    ("edit", {"edit_passes": 2, "keep_threshold": 0.5})])
def test_rows_do_not_depend_on_the_batch_size(tmp_path, tiny_checkpoint, name, params):
    """--batch-size is a speed knob: batch 4 and batch 16 give every row the same output and NFE."""
    base = small_config(tiny_checkpoint, tasks=[{"name": "arith", "n": 16, "split": "test", "seed": 0}],
                        strategies=[{"name": name, "label": name, "params": params}], budgets=["1/2"],
                        gen_length=16, save_traces=False)
    runs = {}
    for bs in (4, 16):
        config = config_from_dict(base, source="b.yaml").with_overrides(batch_size=bs)
        rows = load_rows(run_ablation(config, tmp_path / f"b{bs}", progress=False))
        runs[bs] = {r["key"]: (r["output"], r["nfe"], r["correct"], r.get("draft_output")) for r in rows}
    assert len(runs[4]) == 16 and runs[4] == runs[16]


def test_batch_size_and_score_workers_overrides_on_the_command_line(tmp_path, tiny_checkpoint, capsys):
    cfg = write_yaml(tmp_path / "t.yaml", tune_dict(tiny_checkpoint))
    assert main(["tune", str(cfg), "--validate-only", "--batch-size", "256", "--score-workers", "3"]) == 0
    tune = load_tune(cfg)
    exp = tune.experiment_for(batch_size=256, score_workers=3)
    assert (exp.batch_size, exp.score_workers) == (256, 3)
    assert main(["ablate", str(write_yaml(tmp_path / "a.yaml", small_config(tiny_checkpoint))),
                 "--batch-size", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--batch-size 0: must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_shipped_tune_config_names_the_new_checkpoints_on_space_2():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / "ablations" / "embedded_tune.yaml"
    tune = load_tune(path)
    by_label = {e.label: e for e in tune.entries}
    assert by_label["conv-r2ft"].extra["model"] == "embedded-r2ft_conv"
    assert by_label["masked-r2ft"].extra["model"] == "embedded-r2ft_conv"
    assert by_label["edit-medlm"].extra["model"] == "embedded-stage3_medlm"
    assert all(e.preset == "paper" for e in tune.entries)
    assert all(dict(t.kwargs) == {"space": 2} for t in tune.experiment.tasks)
    test = {t["name"]: t for t in tune.test_tasks}
    assert test["arith"]["n"] >= 1000 and test["pycode"]["n"] >= 500
    assert all(t["kwargs"] == {"space": 2} and t["split"] == "test" for t in test.values())
    from refinery.core.checkpoint import EMBEDDED

    assert EMBEDDED["embedded-r2ft_conv"].name == "r2ft_conv" and EMBEDDED["embedded-stage3_medlm"].name == \
        "stage3_medlm"
    assert json.dumps(tune.experiment.to_dict())  # plain data
