"""``python -m refinery.analysis.protocol_table``: a tiny tune + its winners on test -> the README table."""

from __future__ import annotations

import hashlib
import json

import pytest

from refinery.analysis.protocol_table import load_protocol_run, main, protocol_markdown
from refinery.analysis.tables import mcnemar_exact, wilson_interval
from refinery.core.tasks.base import Score
from refinery.experiments.store import load_rows
from refinery.cli import main as refinery

from ablation_helpers import write_yaml
from test_tune import tune_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many tiny decodes: one thread is fastest


def _coin_score(self, example, output: str) -> Score:
    """A random tiny model solves nothing: judge by a hash of (problem, output) instead, so the table's
    cells, gains and wins/losses are not all zero (every distinct output is a fresh coin)."""
    ok = hashlib.sha1(f"{example.id}|{output}".encode()).digest()[0] % 2 == 0
    return Score(correct=ok, answer_correct=ok)


@pytest.fixture(scope="module")
def protocol_runs(tmp_path_factory, tiny_checkpoint):
    """A tune of two entries (masked from its paper preset) and one ablate of its winners on test."""
    from refinery.core.tasks.arith import ArithTask

    tmp = tmp_path_factory.mktemp("protocol")
    data = tune_dict(tiny_checkpoint, test_tasks=[{"name": "arith", "n": 12, "split": "test", "seed": 0}])
    data["strategies"][0].update(preset="paper", params={"temperature": 1.0})  # sampled: outputs differ
    data["strategies"][1]["params"] = {"threshold": 0.5, "temperature": 1.0}
    cfg = write_yaml(tmp / "tune.yaml", data)
    tune, test = tmp / "tune", tmp / "test"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ArithTask, "score", _coin_score)
        assert refinery(["tune", str(cfg), "--out", str(tune), "--no-progress"]) == 0
        assert refinery(["ablate", str(tune / "winners.yaml"), "--out", str(test), "--no-progress"]) == 0
    rows = load_rows(test)
    assert 0 < sum(r["correct"] for r in rows) < len(rows)  # the coin made a table worth checking
    return tune, test


def _line(md: str, start: str) -> list[str]:
    """The cells of the markdown line that starts with ``start`` (in the first table that has one)."""
    line = next(x for x in md.splitlines() if x.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_every_entry_has_a_preset_and_a_tuned_row_with_wilson_intervals(protocol_runs, tiny_checkpoint):
    tune, test = protocol_runs
    md = protocol_markdown(tune, test)
    rows = load_rows(test)
    for entry in ("masked", "threshold"):
        for setting, label in (("paper", f"{entry}/paper" if entry == "masked" else f"{entry}/start"),
                               ("tuned", entry)):
            cells = _line(md, f"| {entry} | {tiny_checkpoint} | {setting} |")
            for budget, cell in zip(("1/1", "1/4"), cells[3:]):
                mine = [r["correct"] for r in rows if r["label"] == label and r["budget"] == budget]
                lo, hi = wilson_interval(sum(mine), len(mine))
                assert len(mine) == 12
                assert cell == f"{100 * sum(mine) / 12:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert "Times the winners were run on test: 1." in md
    assert "Baseline of the gains: `masked` at its paper setting" in md
    assert "| masked | masked | 3/3 |" in md  # the trials-per-strategy table


def test_gains_are_paired_with_the_untuned_mask_only_rows(protocol_runs, tiny_checkpoint):
    tune, test = protocol_runs
    md = protocol_markdown(tune, test)
    gain_part = md[md.index("paired gain over"):]
    rows = load_rows(test)
    base = {(r["example_id"], r["budget"]): r["correct"] for r in rows if r["label"] == "masked/paper"}
    seen = set()
    for entry, setting, label in (("masked", "tuned", "masked"), ("threshold", "paper", "threshold/start"),
                                  ("threshold", "tuned", "threshold")):
        cells = _line(gain_part, f"| {entry} | {tiny_checkpoint} | {setting} |")
        for budget, cell in zip(("1/1", "1/4"), cells[3:]):
            mine = {r["example_id"]: r["correct"] for r in rows if r["label"] == label and r["budget"] == budget}
            wins = sum(ok and not base[(e, budget)] for e, ok in mine.items())
            losses = sum(base[(e, budget)] and not ok for e, ok in mine.items())
            gain = 100 * (sum(mine.values()) - sum(base[(e, budget)] for e in mine)) / len(mine)
            assert cell == f"{gain:+.1f} ({wins}/{losses}, p={mcnemar_exact(wins, losses):.2g})"
            seen.add((wins, losses))
    assert seen != {(0, 0)}  # some pairs disagree: the pairing is really exercised
    assert not any(x.startswith(f"| masked | {tiny_checkpoint} | paper |") for x in gain_part.splitlines())


def test_winning_settings_name_the_trial_and_what_changed(protocol_runs):
    tune, test = protocol_runs
    record = json.loads((tune / "protocol.json").read_text())
    md = protocol_markdown(tune, test)
    for e in record["entries"]:
        won = e["winners"]["*"]
        cells = _line(md[md.index("### Winning settings"):], f"| {e['label']} |")
        assert cells[3] == f"t{won:02d}"
        changed = {k for k, v in e["trials"][won]["params"].items() if e["trials"][0]["params"].get(k) != v}
        assert all(f"{k}=" in cells[4] for k in changed) and (changed or "start won" in cells[4])


def test_cli_writes_the_file_and_refuses_foreign_rows(protocol_runs, tmp_path, capsys):
    tune, test = protocol_runs
    out = tmp_path / "table.md"
    assert main([str(tune), str(test), "--out", str(out)]) == 0
    assert out.read_text() == protocol_markdown(tune, test)
    assert main([str(tune), str(test), "--baseline", "masked"]) == 2
    assert "--baseline masked: expected ENTRY/paper" in capsys.readouterr().err
    assert main([str(test), str(test)]) == 2  # the test run holds no protocol
    assert "no protocol.json" in capsys.readouterr().err
    assert main([str(tune), str(tune)]) == 2  # the dev rows of the tune run are no test run
    assert "split ['dev']" in capsys.readouterr().err
    record, df = load_protocol_run(tune, test)
    assert set(zip(df["entry"], df["setting"])) == {(e, s) for e in ("masked", "threshold")
                                                     for s in ("paper", "tuned")}
