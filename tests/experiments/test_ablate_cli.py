"""``refinery ablate`` and ``refinery report`` end to end (in process)."""

from __future__ import annotations

from refinery.cli import main

from ablation_helpers import one_torch_thread, small_config, tiny_checkpoint, tiny_checkpoint_no_next, write_yaml  # noqa: F401 (fixtures)


def test_ablate_then_report(tmp_path, tiny_checkpoint, capsys):
    cfg = write_yaml(tmp_path / "small.yaml", small_config(tiny_checkpoint))
    run_dir = tmp_path / "run"
    assert main(["ablate", str(cfg), "--out", str(run_dir), "--limit", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "8 rows" in out  # 2 examples x 2 strategies x 2 budgets
    assert "| strategy | 1/1 | 1/4 |" in out and "| masked-random |" in out
    assert main(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "Gain over `masked`" in report and (tmp_path / "rep" / "figures" / "accuracy_vs_budget.png").is_file()


def test_ablate_bad_config_is_one_clear_line(tmp_path, tiny_checkpoint, capsys):
    data = small_config(tiny_checkpoint)
    data["strategies"][1]["name"] = "remdn"
    cfg = write_yaml(tmp_path / "bad.yaml", data)
    assert main(["ablate", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("refinery ablate: error: ") and str(cfg) in err
    assert "strategies[1].name" in err and "Did you mean 'remdm'" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_validate_only_checks_paths(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", small_config(tmp_path / "missing_model"))
    assert main(["ablate", str(cfg), "--validate-only"]) == 2
    assert "model: " in capsys.readouterr().err
