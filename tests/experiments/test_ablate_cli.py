"""``refinery ablate`` and ``refinery report`` end to end (in process)."""

from __future__ import annotations

import pytest

from refinery.cli import main

from ablation_helpers import small_config, write_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many tiny decodes: one thread is fastest


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


def test_a_second_ablate_on_a_locked_directory_is_refused_and_changes_nothing(tmp_path, tiny_checkpoint, capsys):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = ("import sys, time; from pathlib import Path; from experiments.store import acquire_lock; "
              "acquire_lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, "-c", holder, str(run_dir)], cwd=repo, env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        cfg = write_yaml(tmp_path / "small.yaml", small_config(tiny_checkpoint))
        assert main(["ablate", str(cfg), "--out", str(run_dir), "--limit", "2", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"refinery ablate: error: {run_dir} is being written by pid {proc.pid} on host ")
        assert "\n" not in err and " since " in err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # no config, no rows, no traces dir
    finally:
        proc.kill()
        proc.wait()


def test_repair_flag_recovers_a_directory_two_writers_damaged(tmp_path, tiny_checkpoint, capsys):
    cfg = write_yaml(tmp_path / "small.yaml", small_config(tiny_checkpoint))
    run_dir = tmp_path / "run"
    args = ["ablate", str(cfg), "--out", str(run_dir), "--limit", "2", "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    rows = run_dir / "rows.jsonl"
    good = rows.read_bytes()
    damaged = good + good + b"\x00\x00garbage\n"  # what two writers at once left (plus a stray line)
    rows.write_bytes(good + good)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "appears 2 times" in err and "--repair" in err and rows.read_bytes() == good + good
    rows.write_bytes(damaged)
    assert main(args + ["--repair"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{rows}: repaired: kept 8 rows; dropped 8 duplicate keys (kept the first), "
                             "1 garbage lines, 0 rows with a missing trace")
    assert out[1] == f"8 rows in {run_dir}"
    assert rows.read_bytes() == good
    backups = list(run_dir.glob("rows.jsonl.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == damaged


def test_ablate_help_documents_repair(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["ablate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--repair" in out and "rows.jsonl.bak-<UTC time>" in out and "duplicate keys" in out
