"""Figures over ablation rows (matplotlib, Agg backend, PNG files).

- accuracy vs budget, one line per strategy entry, one panel per task (Wilson 95% bars);
- gain over the mask-only baseline vs budget (the ME-DLM poster's view);
- accuracy vs wall time per row;
- edit operations per edit pass (replaced / deleted / inserted), read from saved traces.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from refinery.analysis.tables import accuracy_table, gain_table  # noqa: E402

log = logging.getLogger(__name__)

EDIT_KINDS = ("replaced", "deleted", "inserted")


def _panels(tasks: list[str], title: str):
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False)
    fig.suptitle(title)
    return fig, dict(zip(tasks, axes[0]))


def _budget_axis(ax, table: pd.DataFrame) -> None:
    """Budgets on a log2 axis, labelled as written ('1/8'), most passes on the left."""
    ticks = table[["budget", "budget_value"]].drop_duplicates()
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks["budget_value"], ticks["budget"])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("budget (forward passes per token)")


def _legend(axes: dict) -> None:
    """A legend on the first panel, when it has labelled lines (a run of the baseline alone has none)."""
    ax = next(iter(axes.values()))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _dodge(k: int) -> np.ndarray:
    """Per-entry x factors around each budget (log2 axis: budgets are 1 apart), so that the error bars
    of entries at one budget sit side by side instead of on top of each other."""
    step = min(0.08, 0.7 / max(k, 1))
    return 2.0 ** ((np.arange(k) - (k - 1) / 2) * step)


def accuracy_vs_budget(df: pd.DataFrame, path: str | Path) -> Path:
    table = accuracy_table(df)
    fig, axes = _panels(sorted(table["task"].unique()), "Strict accuracy vs budget (95% Wilson intervals)")
    for task, ax in axes.items():
        t = table[table["task"] == task]
        groups = list(t.groupby("entry", sort=False))
        for (entry, g), shift in zip(groups, _dodge(len(groups))):
            err = np.vstack([g["acc"] - g["ci_lo"], g["ci_hi"] - g["acc"]]) * 100
            ax.errorbar(g["budget_value"] * shift, g["acc"] * 100, yerr=err, marker="o", ms=4, capsize=2,
                        elinewidth=1, label=entry)
        _budget_axis(ax, t)
        ax.set_title(task)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    _legend(axes)
    return _save(fig, Path(path))


def gain_vs_budget(df: pd.DataFrame, path: str | Path, baseline: Optional[str] = None) -> Path:
    table = gain_table(df, baseline)
    tasks = sorted(table["task"].unique()) or sorted(df["task"].unique())
    fig, axes = _panels(tasks, "Gain over the mask-only baseline (accuracy points)")
    for task, ax in axes.items():
        t = table[table["task"] == task]
        for entry, g in t.groupby("entry", sort=False):
            ax.plot(g["budget_value"], g["gain"], marker="o", label=entry)
        ax.axhline(0, color="black", lw=0.8)
        if len(t):
            _budget_axis(ax, t)
        ax.set_title(task)
        ax.set_ylabel("gain (points)")
        ax.grid(alpha=0.3)
    _legend(axes)
    return _save(fig, Path(path))


def accuracy_vs_walltime(df: pd.DataFrame, path: str | Path) -> Path:
    table = accuracy_table(df)
    fig, axes = _panels(sorted(table["task"].unique()), "Strict accuracy vs decode wall time per output")
    for task, ax in axes.items():
        t = table[table["task"] == task]
        for entry, g in t.groupby("entry", sort=False):
            ax.plot(g["wall_s"], g["acc"] * 100, marker="o", label=entry)
        log = t["wall_s"].nunique() > 1  # one distinct time has no range to put on a log axis
        if log:
            _seconds_log_axis(ax, t["wall_s"])
        ax.set_xlabel("seconds per output" + (" (log)" if log else ""))
        ax.set_ylabel("accuracy (%)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    _legend(axes)
    return _save(fig, Path(path))


def _seconds_log_axis(ax, seconds: pd.Series) -> None:
    """A log axis whose labels never collide: major ticks only at 1-2-5 (or at powers of ten over
    more than two decades), labelled plainly ('0.05'), no labels on minor ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = seconds[seconds > 0]
    decades = np.log10(positive.max() / positive.min()) if len(positive) else 0.0
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def edit_op_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Edit operations per (output, edit pass) from the saved traces of edit-phase rows.

    -> columns entry, budget, task, example_id, pass (index among the row's edit passes), replaced,
    deleted, inserted, reverted (1 where the pass sent the row back to an earlier text instead of
    editing). Only passes the row was charged for (active) count."""
    from refinery.experiments.store import load_trace

    out = []
    rows = df[df["trace_file"].notna()] if "trace_file" in df else df.iloc[:0].assign(trace_file=None)
    for (run_dir, trace_file), g in rows.groupby(["run_dir", "trace_file"], sort=False):
        trace, _ = load_trace(run_dir, g.iloc[0].to_dict())
        edit_passes = np.flatnonzero(trace.phases == "edit")
        if not len(edit_passes):
            continue
        counts = {k: np.zeros((trace.num_passes, trace.tokens.shape[1]), np.int64) for k in (*EDIT_KINDS, "reverted")}
        for kind in counts:
            ev = trace.events.get(kind, np.zeros((0, 4), np.int32))
            np.add.at(counts[kind], (ev[:, 0], ev[:, 1]), 1)
        for r in g.itertuples(index=False):
            b = int(r.trace_row)
            for i, s in enumerate(p for p in edit_passes if trace.active[p, b]):
                out.append(dict(entry=r.entry, budget=r.budget, task=r.task, example_id=r.example_id, pass_index=i,
                                **{k: int(c[s, b]) for k, c in counts.items()}))
    return pd.DataFrame(out, columns=["entry", "budget", "task", "example_id", "pass_index", *EDIT_KINDS, "reverted"])


def edit_ops_histogram(df: pd.DataFrame, path: str | Path, counts: Optional[pd.DataFrame] = None) -> Optional[Path]:
    """Histogram of replace / delete / insert counts per edit pass (``counts``: :func:`edit_op_counts` of
    ``df``, when already read); None when no row has edit passes."""
    counts = edit_op_counts(df) if counts is None else counts
    if not len(counts):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    top = int(counts[list(EDIT_KINDS)].to_numpy().max())
    bins = np.arange(0, top + 2) - 0.5 if top < 40 else 40
    # outlines, not filled bars: three overlapping filled histograms blend into colours no legend names
    for kind, style in zip(EDIT_KINDS, ("-", "--", ":")):
        ax.hist(counts[kind], bins=bins, histtype="step", linewidth=2, linestyle=style,
                label=f"{kind} (mean {counts[kind].mean():.2f})")
    ax.set_xlabel("operations in one edit pass of one output")
    ax.set_ylabel("(output, pass) pairs")
    ax.set_title(f"Edit operations per pass ({len(counts)} edit passes)")
    ax.legend(handles=[plt.Line2D([], [], color=p.get_edgecolor(), linestyle=p.get_linestyle(), linewidth=2)
                       for p in ax.patches], labels=[f"{k} (mean {counts[k].mean():.2f})" for k in EDIT_KINDS])
    return _save(fig, Path(path))
