"""``python -m refinery.analysis.cache_table``: ENTRY@MODE rows against each entry's ``@none`` rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from refinery.analysis.cache_table import cache_cells, cache_markdown, cache_summary, main
from refinery.analysis.load import load_runs
from refinery.analysis.tables import mcnemar_exact

# (label, budget) -> {example: (correct, output)}; task arith, seed 0. Entry m, all three modes:
#   1/1: prefix is right on e3 where none is wrong and wrong on e2 where none is right (diff 0, 2 outputs
#        equal); dual is wrong on everything (-75, no output equal);
#   1/4: none lacks e3 (a partial cell), prefix has all four, so only e0-e2 pair: prefix 1,1,0 vs none
#        1,0,0 = +33.3 points (unpaired it would be 75.0 - 33.3 = +41.7), outputs of e0 and e2 equal;
#        dual has no rows (a missing cell).
CELLS = {
    ("m@none", "1/1"): {"e0": (1, "a"), "e1": (1, "b"), "e2": (1, "c"), "e3": (0, "d")},
    ("m@prefix", "1/1"): {"e0": (1, "a"), "e1": (1, "b"), "e2": (0, "x"), "e3": (1, "y")},
    ("m@dual", "1/1"): {f"e{i}": (0, "w") for i in range(4)},
    ("m@none", "1/4"): {"e0": (1, "p"), "e1": (0, "q"), "e2": (0, "r")},
    ("m@prefix", "1/4"): {"e0": (1, "p"), "e1": (1, "z"), "e2": (0, "r"), "e3": (1, "t")},
}


def _row(label: str, budget: str, example: str, correct: int, output: str) -> dict:
    return dict(key=json.dumps(["arith", example, label, budget, 0]), task="arith", split="test", example_id=example,
                strategy="masked", label=label, budget=budget, budget_value={"1/1": 1.0, "1/4": 0.25}[budget], seed=0,
                output=output, correct=bool(correct), answer_correct=bool(correct), nfe=4, max_nfe=4,
                tokens_generated=4, wall_seconds=0.1, batch_seconds=0.4)


def _rows(cells: dict = CELLS) -> list[dict]:
    return [_row(label, budget, ex, ok, out)
            for (label, budget), by_ex in cells.items() for ex, (ok, out) in by_ex.items()]


def _run(path, rows: list[dict], config: dict | None = None):
    path.mkdir()
    (path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def _config(caches: dict | None = None) -> dict:
    """The plan of CELLS: arith n=4 x budgets 1/1, 1/4 x m@none/prefix/dual (``caches``: label -> cache setting)."""
    caches = caches or {f"m@{m}": m for m in ("none", "prefix", "dual")}
    return dict(name="cache", model="embedded", tasks=[dict(name="arith", n=4, split="test", seed=0)],
                strategies=[dict(name="masked", label=lab, cache=c) for lab, c in caches.items()],
                budgets=["1/1", "1/4"], gen_length=16, batch_size=4, seeds=[0])


def test_cells_are_paired_on_the_same_examples(tmp_path):
    cells = cache_cells(load_runs([_run(tmp_path / "run", _rows())])).set_index(["mode", "budget"])
    assert cells.loc[("none", "1/1"), ["n", "k"]].tolist() == [4, 3]
    assert pd.isna(cells.loc[("none", "1/1"), "diff"])  # the reference has no difference to itself
    prefix = cells.loc[("prefix", "1/1")]
    assert prefix[["paired", "wins", "losses", "identical"]].tolist() == [4, 1, 1, 2] and prefix["diff"] == 0.0
    assert cells.loc[("dual", "1/1"), "diff"] == pytest.approx(-75.0)
    assert cells.loc[("dual", "1/1"), "p_value"] == pytest.approx(mcnemar_exact(0, 3))  # 0.25
    late = cells.loc[("prefix", "1/4")]
    assert late["n"] == 4 and late["acc"] == 0.75 and late["paired"] == 3  # e3 has no uncached partner
    assert late["diff"] == pytest.approx(100 / 3) and late[["wins", "losses", "identical"]].tolist() == [1, 0, 2]
    assert ("dual", "1/4") not in cells.index


def test_summary_flips_p_and_identical_share():
    summary = cache_summary(cache_cells(pd.DataFrame(_rows()))).set_index("mode")
    prefix, dual = summary.loc["prefix"], summary.loc["dual"]
    assert prefix[["cells", "within", "wins", "losses"]].tolist() == [2, 1, 2, 1]  # 1/1 (0.0) within, 1/4 not
    assert prefix["p_value"] == mcnemar_exact(2, 1) and pd.isna(prefix["worst"])  # no cell lost
    assert prefix["identical_share"] == pytest.approx(4 / 7)  # (2 + 2) equal outputs of 4 + 3 paired rows
    assert dual[["cells", "within", "wins", "losses", "worst_cell"]].tolist() == [1, 0, 0, 3, "arith 1/1"]
    assert dual["worst"] == pytest.approx(-75.0) and dual["identical_share"] == 0.0


def test_exactly_one_point_counts_as_within():
    cells = pd.DataFrame([dict(task="arith", entry="m", mode="prefix", budget=b, paired=100, diff=d, wins=w,
                               losses=x, identical=100.0) for b, d, w, x in
                          [("1/1", -1.0, 0, 1), ("1/2", 1.0, 1, 0), ("1/4", -2.0, 0, 2)]])
    s = cache_summary(cells).iloc[0]
    assert (s["within"], s["cells"], s["worst"], s["worst_cell"]) == (2, 3, -2.0, "arith 1/4")


def test_markdown_marks_missing_partial_and_partly_paired_cells(tmp_path):
    text = cache_markdown([_run(tmp_path / "run", _rows(), _config())])
    assert "| entry | cache | arith 1/1 | arith 1/4 |" in text
    assert "| m | none | 75.0 | 33.3 n=3 |" in text
    assert "| m | prefix | 75.0 (+0.0) | 75.0 (+33.3, 3 paired) |" in text
    assert "| m | dual | 0.0 (-75.0) | - |" in text
    assert "18 rows" not in text and "19 rows, split test; tasks arith n=4" in text
    assert "Plan (the runs' config.yaml): 6 cells, 1 missing ('-'), 1 partial" in text
    assert "| m | prefix | 1/2 | none | 2 / 1 (p=1) | 57.1% |" in text
    assert "| m | dual | 0/1 | -75.0 (arith 1/1) | 0 / 3 (p=0.25) | 0.0% |" in text


def test_missing_cells_without_a_config_count_against_the_present_grid(tmp_path):
    text = cache_markdown([_run(tmp_path / "run", _rows())])
    assert "no config.yaml" in text and "6 cells, 1 missing ('-'), 1 partial" in text


def test_config_plans_cells_no_row_has_reached(tmp_path):
    config = _config()
    config["budgets"] = ["1/1", "1/4", "1/8"]
    text = cache_markdown([_run(tmp_path / "run", _rows(), config)])
    assert "9 cells, 4 missing" in text and "| m | none | 75.0 | 33.3 n=3 | - |" in text


def test_runs_in_parts_pool_and_count_a_repeated_row_once(tmp_path):
    rows = _rows()
    none = [r for r in rows if r["label"] == "m@none"]
    a = _run(tmp_path / "a", none, _config())
    b = _run(tmp_path / "b", [r for r in rows if r["label"] != "m@none"] + none[:1], _config())
    text = cache_markdown([a, b])
    assert "| m | prefix | 75.0 (+0.0) | 75.0 (+33.3, 3 paired) |" in text
    assert "19 rows" in text and "1 rows repeated across runs counted once" in text


def test_bad_label_is_one_error_line_unless_skipped(tmp_path, capsys):
    run = _run(tmp_path / "run", _rows() + [_row("masked", "1/1", "e0", 1, "a"), _row("m@fast", "1/1", "e0", 1, "a")])
    assert main([str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label 'masked' is not ENTRY@MODE" in err[0] and str(run) in err[0]
    assert main([str(run), "--skip-other-labels"]) == 0
    out = capsys.readouterr().out
    assert "2 rows of other labels left out" in out and "| m | dual | 0.0 (-75.0) | - |" in out


def test_a_label_that_contradicts_its_entrys_cache_is_an_error(tmp_path, capsys):
    run = _run(tmp_path / "run", _rows(), _config({"m@none": "none", "m@prefix": "dual", "m@dual": "dual"}))
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "label 'm@prefix' says cache prefix but the entry runs with cache dual" in err


def test_cli_writes_out(tmp_path, capsys):
    run, out = _run(tmp_path / "run", _rows(), _config()), tmp_path / "table.md"
    assert main([str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert out.read_text() == cache_markdown([run])
    assert "| m | prefix | 75.0 (+0.0) |" in out.read_text()


def test_ran_only_plans_just_the_lines_that_have_rows(tmp_path):
    rows = [r for r in _rows() if r["label"] != "m@dual"]  # a run made with --only m@none,m@prefix
    run = _run(tmp_path / "run", rows, _config())
    assert "| m | dual | - |" in cache_markdown([run])
    text = cache_markdown([run], ran_only=True)
    assert "| m | dual |" not in text and "| m | prefix | 75.0 (+0.0) |" in text
