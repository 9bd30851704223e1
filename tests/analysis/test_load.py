"""Loading rows: ``subset`` comes from the rows; only rows written before rows carried it are rebuilt."""

from __future__ import annotations

import json

import refinery.analysis.load
from refinery.analysis.load import load_runs


def _write(run_dir, rows: list[dict]):
    run_dir.mkdir()
    (run_dir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def _subsets(df) -> list:
    return [v if isinstance(v, str) else None for v in df["subset"]]  # pandas may hold a missing one as NaN


def _row(i: int, **extra) -> dict:
    return dict(key=f"k{i}", task="pycode", split="test", example_id=f"e{i}", strategy="masked", label="masked",
                budget="1/1", budget_value=1.0, seed=0, correct=True, answer_correct=True, nfe=8, max_nfe=8,
                tokens_generated=8, wall_seconds=0.1, batch_seconds=0.4, **extra)


def test_rows_that_carry_subset_never_rebuild_the_examples(tmp_path, monkeypatch):
    def rebuild(run_dir):
        raise AssertionError("the examples were rebuilt")

    monkeypatch.setattr(refinery.analysis.load, "example_subsets", rebuild)
    run = _write(tmp_path / "run", [_row(0, subset="seen"), _row(1, subset=None), _row(2, subset="unseen")])
    assert _subsets(load_runs([run])) == ["seen", None, "unseen"]


def test_only_old_rows_without_subset_get_it_rebuilt(tmp_path, monkeypatch):
    calls = []

    def rebuild(run_dir):
        calls.append(run_dir)
        return {("pycode", "e1"): "rebuilt", ("pycode", "e0"): "not used"}

    monkeypatch.setattr(refinery.analysis.load, "example_subsets", rebuild)
    run = _write(tmp_path / "run", [_row(0, subset="stored"), _row(1), _row(2)])
    assert _subsets(load_runs([run])) == ["stored", "rebuilt", None]
    assert calls == [run]


def test_a_run_without_rows_still_has_a_subset_column(tmp_path):
    df = load_runs([_write(tmp_path / "run", [])])
    assert len(df) == 0 and "subset" in df.columns
