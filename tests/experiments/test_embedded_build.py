"""The embedded build split in two device calls: data + Stages 1-2, then the finals alone from ROOT/stage2."""

from __future__ import annotations

import json
import logging

import pytest

from refinery.core.errors import UsageError
from refinery.experiments.embedded import build

TINY = "{d_model: 32, n_layers: 2, n_heads: 4, mlp_hidden_size: 64, max_sequence_length: 256}"
OPTIM = "optim: {lr: 3.0e-3, warmup_steps: 1, max_steps: 50, micro_batch_size: 4, weight_decay: 0.0}"
ENGINE = "engine: {out_dir: runs/x, device: cpu, save_every: 0, tensorboard: false, progress: false}"
# Placeholder paths: the build points data, tokenizer and init_from into ROOT, as it does for the real configs.
CONFIGS = {
    "stage1": f"stage: pretrain\ntokenizer: runs/t\nmodel: {{config: {TINY}}}\n"
              f"data: {{train_files: [runs/embedded/data/pretrain.jsonl], seq_len: 64}}\n{OPTIM}\n{ENGINE}\n",
    "stage2": f"stage: sft\nmodel: {{init_from: runs/s1}}\n"
              f"data: {{train_files: [runs/embedded/data/sft.jsonl], seq_len: 128, pad_len: 48}}\n{OPTIM}\n{ENGINE}\n",
}


@pytest.fixture
def tiny_configs(tmp_path, monkeypatch):
    """Tiny stand-ins for embedded_stage{1,2}.yaml; the final model reuses the Stage-2 one (its data: ROOT/data)."""
    paths = {}
    for name, text in CONFIGS.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text)
    monkeypatch.setattr(build, "CONFIGS", {1: paths["stage1"], 2: paths["stage2"], 3: paths["stage2"]})
    return paths


def _report(root):
    return json.loads((root / "build.json").read_text())


def _metric_lines(out):
    return sum(1 for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip())


def test_finals_alone_reuse_the_data_and_merge_into_build_json(tiny_configs, tmp_path, caplog, capsys):
    root = tmp_path / "e"
    common = ["--root", str(root), "--device", "cpu", "--n-records", "8", "--workers", "1"]
    final = f"{tiny_configs['stage2']}:2"
    # call 1: data + Stage 1 + Stage 2
    assert build.main(common + ["--stages", "1,2", "--steps", "1:2,2:2"]) == 0
    first = _report(root)
    assert set(first["stages"]) == {"1", "2"} and first["stages"]["2"]["steps"] == 2 and "finals" not in first
    kept = [root / "data" / "prepare.json", root / "data" / "sft.jsonl", root / "data" / "tokenizer" / "tokenizer.json"]
    mtimes = [p.stat().st_mtime_ns for p in kept]

    # call 2: the finals alone, on the data of call 1
    caplog.set_level(logging.INFO, logger=build.__name__)
    assert build.main(common + ["--stages", "none", "--finals", f"a={final}"]) == 0
    assert "reusing the data prepared with the same options" in caplog.text
    assert [p.stat().st_mtime_ns for p in kept] == mtimes  # prepare did not run again
    second = _report(root)
    assert second["stages"] == first["stages"] and second["data"] == first["data"]
    assert second["prepare_seconds"] == first["prepare_seconds"]  # the time it took to build, not to reuse
    assert second["finals"]["a"]["steps"] == 2 == second["finals"]["a"]["max_steps"] == _metric_lines(root / "a")
    assert (root / "a" / "train_config.json").is_file()

    # a final cut by --final-seconds still saves its model and is reported with the steps it ran
    assert build.main(common + ["--stages", "none", "--final-seconds", "0.001",
                                "--finals", f"b={tiny_configs['stage2']}:50"]) == 0
    third = _report(root)
    assert set(third["finals"]) == {"a", "b"} and third["stages"] == first["stages"]
    assert third["finals"]["b"]["steps"] == _metric_lines(root / "b") < third["finals"]["b"]["max_steps"] == 50
    assert (root / "b" / "train_config.json").is_file() and (root / "b" / "config.json").is_file()

    # other data options without Stage 1: one error line before anything runs; the data stays as it was
    capsys.readouterr()
    assert build.main(["--root", str(root), "--n-records", "9", "--stages", "none", "--finals", f"c={final}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_pretrain 8 -> 9" in err and "prepare.json" in err
    assert [p.stat().st_mtime_ns for p in kept] == mtimes and not (root / "c").exists()
    # other options in a data-only command (nothing trained from it): the data is rebuilt
    assert build.main(["--root", str(root), "--n-records", "9", "--workers", "1", "--stages", "none"]) == 0
    assert json.loads(kept[0].read_text())["params"]["n_pretrain"] == 9 and _report(root)["data"]["pretrain"] == 18


def test_finals_without_a_finished_stage2_fail_before_anything_starts(tiny_configs, tmp_path, capsys):
    root = tmp_path / "e"
    assert build.main(["--root", str(root), "--stages", "none", "--finals", f"a={tiny_configs['stage2']}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and str(root / "stage2") in err and "--finals" in err
    assert not root.exists()  # no data prepared, no directory made


@pytest.mark.parametrize("text, stages", [("none", []), ("2,1", [1, 2]), ("3", [3]), ("1,2,3", [1, 2, 3])])
def test_parse_stages(text, stages):
    assert build.parse_stages(text) == stages


@pytest.mark.parametrize("text", ["", "None", "0,1", "1,,2", "x", "1,4"])
def test_parse_stages_rejects(text):
    with pytest.raises(UsageError, match="--stages: expected 'none'"):
        build.parse_stages(text)


def test_start_report_keeps_what_a_rerun_leaves_valid(tmp_path):
    old = {"data": {"sft": 4}, "stages": {"1": {"steps": 1}, "2": {"steps": 2}, "3": {"steps": 3}},
           "finals": {"stage3": {"steps": 4}, "r2ft": {"steps": 5}}}
    (tmp_path / "build.json").write_text(json.dumps(old))
    assert build.start_report(tmp_path, []) == old  # finals alone: everything kept (new finals added by name)
    assert build.start_report(tmp_path, [1, 2]) == {"stages": {}}  # a new Stage 1: a new report
    rerun2 = build.start_report(tmp_path, [2, 3])
    assert rerun2["stages"] == {"1": {"steps": 1}} and rerun2["finals"] == {}  # the finals started from stage2
    rerun3 = build.start_report(tmp_path, [3])
    assert set(rerun3["stages"]) == {"1", "2"} and rerun3["finals"] == {"r2ft": {"steps": 5}}  # ROOT/stage3 redone
    (tmp_path / "build.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="build.json: not a build report"):
        build.start_report(tmp_path, [])
