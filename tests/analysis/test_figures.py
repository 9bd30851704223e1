"""Figures and report.md: PNGs are written, and the edit-operation counts come from the traces."""

from __future__ import annotations

import json

import numpy as np

from refinery.analysis import figures
from refinery.analysis.load import load_runs
from refinery.analysis.report import write_report

from refinery.core.trace import CompactTrace

PNG = b"\x89PNG\r\n\x1a\n"


def test_edit_op_counts_read_the_traces(run_dir):
    counts = figures.edit_op_counts(load_runs([run_dir]))
    got = {(r.example_id, r.pass_index): (r.replaced, r.deleted, r.inserted) for r in counts.itertuples()}
    # row 0: edit pass 1 = 2 replaced + 1 deleted, pass 2 = 2 inserted; row 1: pass 1 = 1 inserted, then inactive
    assert got == {("e0", 0): (2, 1, 0), ("e0", 1): (0, 0, 2), ("e1", 0): (0, 0, 1)}
    assert set(counts["entry"]) == {"edit"}


def test_rows_sent_back_by_an_undo_rule_are_counted(run_dir, tmp_path):
    trace = CompactTrace.load(run_dir / "traces" / "edit.npz")
    trace.active[2, 1] = True  # row 1 is charged for the last pass, which sends it back to its draft
    trace.events["reverted"] = np.array([[2, 1, -1, 1]], np.int32)
    trace.save(run_dir / "traces" / "edit.npz")
    counts = figures.edit_op_counts(load_runs([run_dir]))
    got = {(r.example_id, r.pass_index): r.reverted for r in counts.itertuples()}
    assert got == {("e0", 0): 0, ("e0", 1): 0, ("e1", 0): 0, ("e1", 1): 1}
    text = write_report([run_dir], tmp_path / "out").read_text()
    assert "| arith | edit | 75.0 -> 100.0 (+1 / -0, 1 back) | 50.0 -> 50.0 (+1 / -1) |" in text


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
    for heading in ("## Strict accuracy", "## Gain over `masked`", "## Paired with `masked`", "## Details",
                    "Edit operations per edit pass"):
        assert heading in text
    assert "| edit | +25.0 | +25.0 |" in text
    assert "| arith | edit | 75.0 -> 100.0 (+1 / -0) | 50.0 -> 50.0 (+1 / -1) |" in text
    assert "| edit | 1/0 (p=1) | 1/0 (p=1) |" in text and "| masked-semiar | 0/1 (p=1) | 0/1 (p=1) |" in text
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(links) == 4  # accuracy, wall time, gain, edit operations
    for link in links:
        assert (tmp_path / "out" / link).read_bytes()[:8] == PNG


def test_report_of_a_run_without_traces_has_no_edit_figure(run_dir, tmp_path):
    rows = [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("trace_file", None), row.pop("trace_row", None)
    (run_dir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report([run_dir], tmp_path / "out").read_text()
    assert "## Strict accuracy" in text and "Edit operations per edit pass" not in text


def test_report_breaks_accuracy_down_by_the_tasks_subsets(tmp_path):
    from refinery.core.tasks import get_task
    from refinery.experiments.config import config_from_dict, dump_config

    config = config_from_dict({"tasks": [{"name": "pycode", "n": 6, "split": "test"}],
                               "strategies": [{"name": "masked"}], "budgets": ["1/1"], "gen_length": 8,
                               "batch_size": 4})
    examples = get_task("pycode").examples("test", 6)
    unseen = [e.meta["subset"] == "pair unseen in training" for e in examples]
    assert 0 < sum(unseen) < 6  # both subsets occur among these six
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(config))
    # the run solves exactly the unseen ones
    rows = [dict(key=e.id, task="pycode", split="test", example_id=e.id, strategy="masked", label="masked",
                 budget="1/1", budget_value=1.0, seed=0, correct=u, answer_correct=u, nfe=8, max_nfe=8,
                 tokens_generated=8, wall_seconds=0.1, batch_seconds=0.4) for e, u in zip(examples, unseen)]
    (run / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report([run], tmp_path / "out").read_text()
    section = text.split("## By subset")[1].split("## Details")[0]
    assert f"pycode, pair unseen in training (strict accuracy %, n={sum(unseen)} examples)" in section
    assert f"pycode, pair seen in training (strict accuracy %, n={6 - sum(unseen)} examples)" in section
    assert section.count("| masked | 100.0 |") == 1 and section.count("| masked | 0.0 |") == 1


def test_error_bars_of_entries_at_one_budget_are_dodged(run_dir, tmp_path):
    import matplotlib.pyplot as plt

    df = load_runs([run_dir])
    seen = []
    real = plt.Axes.errorbar

    def spy(self, x, y, *a, **k):
        seen.append((k.get("label"), np.asarray(x, float)))
        return real(self, x, y, *a, **k)

    plt.Axes.errorbar = spy
    try:
        figures.accuracy_vs_budget(df, tmp_path / "a.png")
    finally:
        plt.Axes.errorbar = real
    firsts = [x[0] for _, x in seen]
    assert len(seen) == df["entry"].nunique() and len(set(firsts)) == len(firsts)  # no two on one x
    budget = df["budget_value"].max()
    assert all(abs(np.log2(x / budget)) < 0.36 for x in firsts)  # each stays nearer its budget than the next


def test_walltime_tick_labels_never_collide(tmp_path):
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for seconds in ([0.021, 0.034, 0.048, 0.09], [0.003, 0.9, 40.0]):
        ax.clear()
        ax.plot(seconds, range(len(seconds)))
        figures._seconds_log_axis(ax, pd.Series(seconds))
        fig.canvas.draw()
        boxes = [t.get_window_extent() for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True)
                 if t.get_text() and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
        assert len(boxes) >= 2
        boxes.sort(key=lambda b: b.x0)
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)


def test_edit_histogram_is_outlines_with_a_matching_legend(run_dir, tmp_path):
    import matplotlib.pyplot as plt

    made = []
    real = plt.Figure.savefig

    def keep(self, *a, **k):
        made.append(self)
        return real(self, *a, **k)

    plt.Figure.savefig = keep
    try:
        figures.edit_ops_histogram(load_runs([run_dir]), tmp_path / "e.png")
    finally:
        plt.Figure.savefig = real
    ax = made[0].axes[0]
    assert len(ax.patches) == 3 and not any(p.get_fill() for p in ax.patches)
    handles = ax.get_legend().legend_handles
    assert [h.get_color() for h in handles] == [p.get_edgecolor() for p in ax.patches]
    assert [t.get_text().split()[0] for t in ax.get_legend().get_texts()] == list(figures.EDIT_KINDS)


def test_details_table_has_one_format_per_column(run_dir, tmp_path):
    text = write_report([run_dir], tmp_path / "out").read_text()
    rows = [line.split(" | ") for line in text[text.index("## Details"):].split("## Figures")[0].splitlines()
            if line.startswith("| arith |")]
    assert rows
    for cells in rows:
        n, acc, lo, hi, answer, nfe, max_nfe, wall = cells[3:11]
        assert n.isdigit() and max_nfe.isdigit()
        for v in (acc, lo, hi, answer, nfe):
            assert v.split(".")[1].__len__() == 1, cells  # 0.1 everywhere
