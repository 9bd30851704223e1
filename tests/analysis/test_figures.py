"""Figures and report.md: PNGs are written, and the edit-operation counts come from the traces."""

from __future__ import annotations

from analysis import figures
from analysis.load import load_runs
from analysis.report import write_report

from analysis_helpers import run_dir  # noqa: F401 (fixture)

PNG = b"\x89PNG\r\n\x1a\n"


def test_edit_op_counts_read_the_traces(run_dir):
    counts = figures.edit_op_counts(load_runs([run_dir]))
    got = {(r.example_id, r.pass_index): (r.replaced, r.deleted, r.inserted) for r in counts.itertuples()}
    # row 0: edit pass 1 = 2 replaced + 1 deleted, pass 2 = 2 inserted; row 1: pass 1 = 1 inserted, then inactive
    assert got == {("e0", 0): (2, 1, 0), ("e0", 1): (0, 0, 2), ("e1", 0): (0, 0, 1)}
    assert set(counts["entry"]) == {"edit"}


def test_figures_are_pngs(run_dir, tmp_path):
    df = load_runs([run_dir])
    paths = [figures.accuracy_vs_budget(df, tmp_path / "a.png"), figures.gain_vs_budget(df, tmp_path / "g.png"),
             figures.accuracy_vs_walltime(df, tmp_path / "w.png"), figures.edit_ops_histogram(df, tmp_path / "e.png")]
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    no_edit = df[df["strategy"] != "edit"]
    assert figures.edit_ops_histogram(no_edit, tmp_path / "none.png") is None


def test_report_has_tables_and_linked_figures(run_dir, tmp_path):
    report = write_report([run_dir], tmp_path / "out")
    text = report.read_text()
    for heading in ("## Strict accuracy", "## Gain over `masked`", "## Paired with `masked`", "## Details", "Edit operations per edit pass"):
        assert heading in text
    assert "| edit | +25.0 | +25.0 |" in text
    assert "| arith | edit | 75.0 -> 100.0 (+1 / -0) | 50.0 -> 50.0 (+1 / -1) |" in text
    assert "| edit | 1/0 (p=1) | 1/0 (p=1) |" in text and "| masked-semiar | 0/1 (p=1) | 0/1 (p=1) |" in text
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(links) == 4  # accuracy, wall time, gain, edit operations
    for link in links:
        assert (tmp_path / "out" / link).read_bytes()[:8] == PNG
