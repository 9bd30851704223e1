"""``report.md`` over one or more ablation runs: markdown tables plus PNG figures beside it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from refinery.analysis import figures
from refinery.analysis.load import read_runs
from refinery.analysis.tables import accuracy_table, find_baseline, gain_table, main_table_markdown, refinement_table, \
    to_markdown

log = logging.getLogger(__name__)


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, baseline: Optional[str] = None) -> Path:
    """Write ``out_dir/report.md`` and ``out_dir/figures/*.png``; returns the report path."""
    out_dir = Path(out_dir)
    df, reads = read_runs(list(run_dirs))
    if not len(df):
        raise ValueError(f"{', '.join(map(str, run_dirs))}: no rows to report on")
    fig_dir = out_dir / "figures"
    made = {
        "Accuracy vs budget": figures.accuracy_vs_budget(df, fig_dir / "accuracy_vs_budget.png"),
        "Accuracy vs wall time": figures.accuracy_vs_walltime(df, fig_dir / "accuracy_vs_walltime.png"),
    }
    sections = [f"# Ablation report\n\nRuns: {', '.join(f'`{d}`' for d in run_dirs)}; {len(df)} rows, "
                f"{df['entry'].nunique()} strategy entries, tasks {', '.join(sorted(df['task'].unique()))}.\n\n"
                + _rows_read_markdown(run_dirs, reads),
                "## Strict accuracy (%)\n\n" + main_table_markdown(df)]
    try:
        base = find_baseline(df, baseline)
    except ValueError as e:
        if baseline is not None:
            raise
        log.warning("no gain table: %s", e)
        base = None
    if base is not None:
        made["Gain over the baseline vs budget"] = figures.gain_vs_budget(df, fig_dir / "gain_vs_budget.png", base)
        gains = gain_table(df, base)
        sections.append(f"## Gain over `{base}` (accuracy points)\n\n" + _gain_markdown(gains))
        sections.append(f"## Paired with `{base}`\n\nProblems only the entry solves / only `{base}` solves "
                        "(same problem and seed), and the exact two-sided McNemar p-value of that split.\n\n"
                        + _paired_markdown(gains))
    refined = refinement_table(df)
    ops = figures.edit_op_counts(df)
    if len(refined):
        keys = ["task", "entry", "budget"]
        back = ops.groupby(keys, as_index=False)["reverted"].sum()
        refined = refined.merge(back, on=keys, how="left").fillna({"reverted": 0})
        cells = [f"{100 * d:.1f} -> {100 * a:.1f} (+{f} / -{b}" + (f", {int(n)} back)" if n else ")") for d, a, f, b, n
                 in zip(refined["draft_acc"], refined["acc"], refined["fixed"], refined["broken"], refined["reverted"])]
        sections.append("## What the refinement passes did\n\nStrict accuracy of the mask phase's draft -> of the "
                        "final text (%), the outputs the edit passes fixed (+) and broke (-), and (from the saved "
                        "traces) the rows an undo rule sent back to an earlier text.\n\n"
                        + _budget_grid(refined.assign(cell=cells), "cell"))
    by_subset = df[df["subset"].notna()]
    if len(by_subset):
        sections.append("## By subset\n\nStrict accuracy (%) on the examples of each subset a task defines "
                        "(pycode: whether the problem's function family and argument name occur together in "
                        "training).\n\n" + main_table_markdown(by_subset.assign(
                            task=by_subset["task"] + ", " + by_subset["subset"])))
    sections.append("## Details\n\nacc / ci (Wilson 95%) / answer_acc in %, NFE actually used (mean) vs the "
                    "budget's maximum, decode seconds per output, generated tokens per decode second; n: rows "
                    "in the cell.\n\n" + to_markdown(details_table(accuracy_table(df)), index=False))
    hist = figures.edit_ops_histogram(df, fig_dir / "edit_ops_per_pass.png", ops)
    if hist is not None:
        made["Edit operations per edit pass"] = hist
    sections.append("## Figures\n\n" + "\n\n".join(
        f"### {title}\n\n![{title}]({path.relative_to(out_dir).as_posix()})" for title, path in made.items()))
    report = out_dir / "report.md"
    report.write_text("\n\n".join(sections) + "\n")
    return report


# One format per column of the Details table (percentages and NFE to 0.1, seconds to 0.001, tokens/s to 0.1).
DETAIL_FORMATS = {"n": "d", "acc": ".1f", "ci_lo": ".1f", "ci_hi": ".1f", "answer_acc": ".1f", "nfe_mean": ".1f",
                  "max_nfe": "d", "wall_s": ".3f", "tokens_per_s": ".1f"}


def details_table(acc):
    """:func:`accuracy_table` -> the Details columns as strings, each column in one number format."""
    detail = acc[["task", "entry", "budget", *DETAIL_FORMATS]].copy()
    for col in ("acc", "ci_lo", "ci_hi", "answer_acc"):
        detail[col] = detail[col] * 100
    for col, fmt in DETAIL_FORMATS.items():
        detail[col] = [format(int(v) if fmt == "d" else float(v), fmt) if v == v else "" for v in detail[col]]
    return detail


def _rows_read_markdown(run_dirs: Sequence[str | Path], reads) -> str:
    """The header's account of each run's rows.jsonl: rows read and what was dropped (never silently)."""
    torn = "; the torn line is a row still being written, or one a killed run left"
    lines = [f"- `{d}`: {r.summary()}" + (torn if r.torn else "") for d, r in zip(run_dirs, reads)]
    return "Rows:\n\n" + "\n".join(lines)


def _budget_grid(frame, column: str, floatfmt: str = ".1f") -> str:
    """One markdown line per (task, entry), one column per budget (most passes first), cells from ``column``."""
    wide = frame.pivot_table(index=["task", "entry"], columns="budget", values=column, aggfunc="first", sort=False)
    order = frame.drop_duplicates("budget").sort_values("budget_value", ascending=False)["budget"]
    return to_markdown(wide[[b for b in order if b in wide.columns]], floatfmt=floatfmt)


def _paired_markdown(gains) -> str:
    if not len(gains):
        return "(no entry shares a task and budget with the baseline)"
    cells = [f"{w}/{l} (p={p:.2g})" for w, l, p in zip(gains["wins"], gains["losses"], gains["p_value"])]
    return _budget_grid(gains.assign(cell=cells), "cell")


def _gain_markdown(gains) -> str:
    if not len(gains):
        return "(no entry shares a task and budget with the baseline)"
    return _budget_grid(gains, "gain", floatfmt="+.1f")
