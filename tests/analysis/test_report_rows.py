"""``refinery report`` never prints a wrong number silently: a torn last line, duplicate keys and garbage
lines of rows.jsonl are dropped, counted in report.md's header and logged (stderr under the CLI), and a
duplicate never counts twice in n."""

from __future__ import annotations

import json
import logging

from refinery.analysis.report import write_report
from refinery.cli import main


def _lines(run_dir) -> list[str]:
    return (run_dir / "rows.jsonl").read_text().splitlines(keepends=True)


def test_a_torn_last_line_is_counted_not_hidden_under_n(run_dir, tmp_path, caplog):
    """The issue's example: 2 examples, masked at 1/4 solves e0 and not e1 (50.0); the e1 row is the torn
    last line. Before, the cell read 100.0 under "n=2 examples" with no word of the missing row."""
    rows = [json.loads(line) for line in _lines(run_dir)]
    rows = [r for r in rows if r["example_id"] in ("e0", "e1")]
    last = next(r for r in rows if (r["label"], r["budget"], r["example_id"]) == ("masked", "1/4", "e1"))
    rows.remove(last)
    torn = json.dumps(last)
    (run_dir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + torn[: len(torn) // 2])
    with caplog.at_level(logging.WARNING, logger="refinery.analysis.load"):
        assert main(["report", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "rows read 11; dropped: 1 torn line, 0 duplicates (kept first), 0 garbage lines" in text
    assert "arith (strict accuracy %, n=2 examples; cells differ: 1 to 2 rows, fewer marked (n=...))" in text
    assert "| masked | 100.0 | 100.0 (n=1) |" in text  # the one complete 1/4 row, flagged in the cell itself
    assert any("rows.jsonl: rows read 11; dropped: 1 torn line" in r.getMessage() for r in caplog.records)


def test_duplicates_never_double_n_and_garbage_is_counted(run_dir, tmp_path, caplog):
    lines = _lines(run_dir)
    edit_1_1 = [line for line in lines if '"label": "edit"' in line and '"budget": "1/1"' in line]
    assert len(edit_1_1) == 4
    (run_dir / "rows.jsonl").write_text("".join(lines) + "not json\n" + "".join(edit_1_1) + "[1, 2]\n")
    with caplog.at_level(logging.WARNING, logger="refinery.analysis.load"):
        text = write_report([run_dir], tmp_path / "out").read_text()
    assert "rows read 24; dropped: 0 torn lines, 4 duplicates (kept first), 2 garbage lines" in text
    details = text[text.index("## Details"):]
    edit_row = next(line for line in details.splitlines() if line.startswith("| arith | edit | 1/1 |"))
    assert edit_row.startswith("| arith | edit | 1/1 | 4 | 100.0 |")  # n=4, not 8
    assert "n=4 examples)" in text and "cells differ" not in text
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "garbage: line 25: not a JSON row" in warning and "line 30: not a JSON object but a list" in warning


def test_a_clean_run_says_nothing_was_dropped(run_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="refinery.analysis.load"):
        text = write_report([run_dir], tmp_path / "out").read_text()
    assert "rows read 24; dropped: 0 torn lines, 0 duplicates (kept first), 0 garbage lines" in text
    assert not [r for r in caplog.records if r.name == "refinery.analysis.load" and "dropped" in r.getMessage()]
