"""The accuracy table of cached decoding (issue #24): every entry under each KV-cache mode against its uncached rows.

    python -m refinery.analysis.cache_table runs/cache_full [RUN_DIR ...] [--out table.md]

Rows are labelled ``ENTRY@MODE`` (``experiments/ablations/embedded_cache.yaml``, e.g. ``masked-semiar16@dual``),
MODE one of none / prefix / dual; an entry's ``@none`` rows are its reference. The markdown gives

- strict accuracy (%) per entry x mode (lines) and task x budget (columns); a cached cell also gives its
  difference to ``none`` in points on the problems both ran (paired on task, budget, example_id, seed);
- per entry x cached mode: its cells within 1 point of ``none`` (either way), the largest loss and its cell,
  the paired flips over all cells (right only cached / only uncached) with the exact McNemar p, and the
  share of paired rows whose output text is identical to the uncached one.

Several run directories are pooled (one plan run in parts); a row two of them hold counts once (the first).
A partial run is fine: missing cells print '-', and the header counts them against the runs' config.yaml.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from refinery.analysis.load import read_runs
from refinery.analysis.protocol_table import PAIR_KEY  # rows pair on (task, budget, example_id, seed)
from refinery.analysis.tables import mcnemar_exact, to_markdown, write_or_print
from refinery.experiments.config import CACHE_MODES, most_passes_first

log = logging.getLogger(__name__)

WITHIN = 1.0 + 1e-9  # the goal, 1 point (differences are 100 * k / n: exactly 1.0 counts as within)
CELL_COLUMNS = ["task", "entry", "mode", "budget", "n", "k", "acc", "paired", "diff", "wins", "losses", "p_value",
                "identical"]


def split_label(label) -> Optional[tuple[str, str]]:
    """'masked-semiar16@dual' -> ('masked-semiar16', 'dual'); None for a label that is not ENTRY@MODE."""
    entry, at, mode = str(label).rpartition("@")
    return (entry, mode) if at and entry and mode in CACHE_MODES else None


def _bad_label(label, where: str) -> ValueError:
    return ValueError(f"{where}: label {label!r} is not ENTRY@MODE with MODE one of {', '.join(CACHE_MODES)} "
                      "(--skip-other-labels leaves such rows out)")


def with_modes(df: pd.DataFrame, skip_other: bool = False) -> pd.DataFrame:
    """Rows -> a copy with ``entry`` and ``mode`` taken from ``label``. A label that is not ENTRY@MODE raises
    ValueError naming it (and its run directory), or with ``skip_other`` its rows are left out."""
    parsed = df["label"].map(split_label)
    bad = parsed.isna()
    if bad.any() and not skip_other:
        first = df[bad].iloc[0]
        raise _bad_label(first["label"], str(first.get("run_dir", "rows")))
    out = df[~bad].copy()
    out["entry"], out["mode"] = [p[0] for p in parsed[~bad]], [p[1] for p in parsed[~bad]]
    return out


def cache_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Rows (``analysis.load`` frames; split by :func:`with_modes` unless they have ``mode``) -> one line per
    (task, entry, mode, budget): n rows, k right, acc (fraction); for cached modes, on the rows paired with
    the entry's ``none`` cell: paired, diff (points), wins (right only cached) / losses (right only
    uncached), the exact McNemar p_value and identical (outputs equal to the uncached text; NaN without
    an ``output`` column). A cached cell without uncached partners has paired 0 and NaN diff."""
    if "mode" not in df:
        df = with_modes(df)
    df = df.drop_duplicates(["entry", "mode"] + PAIR_KEY)  # n never counts a row twice
    has_text = "output" in df
    ref = df[df["mode"] == "none"].set_index(["entry"] + PAIR_KEY)[["correct"] + ["output"] * has_text]
    ref = ref.add_prefix("none_")
    out = []
    for (task, entry, mode, budget), g in df.groupby(["task", "entry", "mode", "budget"], sort=False):
        k = int(g["correct"].sum())
        line = dict(task=task, entry=entry, mode=mode, budget=budget, n=len(g), k=k, acc=k / len(g))
        if mode != "none":
            line.update(_paired(g.join(ref, on=["entry"] + PAIR_KEY, how="inner"), has_text))
        out.append(line)
    return pd.DataFrame(out, columns=CELL_COLUMNS)


def _paired(pair: pd.DataFrame, has_text: bool) -> dict:
    """Paired fields of one cached cell (``pair``: its rows joined to the uncached ``none_*`` columns)."""
    if not len(pair):
        return dict(paired=0, diff=float("nan"), wins=0, losses=0, p_value=float("nan"), identical=float("nan"))
    right, ref = pair["correct"].astype(bool), pair["none_correct"].astype(bool)
    wins, losses = int((right & ~ref).sum()), int((~right & ref).sum())
    same = sum(_text(a) == _text(b) for a, b in zip(pair["output"], pair["none_output"])) if has_text else None
    return dict(paired=len(pair), diff=100 * (wins - losses) / len(pair), wins=wins, losses=losses,
                p_value=mcnemar_exact(wins, losses), identical=float("nan") if same is None else float(same))


def _text(value) -> str:  # no output (None, or NaN after pandas) equals no output
    return "" if value is None or value != value else str(value)


def cache_summary(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (entry, cached mode) over its cells with a paired difference: cells, within (|diff| <= 1 point),
    worst (the most negative diff, points; NaN when no cell lost) and worst_cell ('arith 1/4'), wins and
    losses summed over the cells with their McNemar p_value, identical_share (of the paired rows)."""
    c = cells[(cells["mode"] != "none") & (cells["paired"] > 0)]
    out = []
    for (entry, mode), g in c.groupby(["entry", "mode"], sort=False):
        worst = g.loc[g["diff"].idxmin()]
        lost = worst["diff"] < 0
        wins, losses = int(g["wins"].sum()), int(g["losses"].sum())
        out.append(dict(entry=entry, mode=mode, cells=len(g), within=int((g["diff"].abs() <= WITHIN).sum()),
                        worst=float(worst["diff"]) if lost else float("nan"),
                        worst_cell=f"{worst['task']} {worst['budget']}" if lost else "", wins=wins, losses=losses,
                        p_value=mcnemar_exact(wins, losses), identical_share=g["identical"].sum() / g["paired"].sum()))
    return pd.DataFrame(out, columns=["entry", "mode", "cells", "within", "worst", "worst_cell", "wins", "losses",
                                      "p_value", "identical_share"])


def plan_cells(run_dirs: Sequence[str | Path], skip_other: bool = False) -> Optional[tuple[list[tuple], dict]]:
    """The cells the runs' config.yaml plan, in config order: ([(entry, mode, task, budget)], {task: rows per
    cell, None where the config takes the whole split}); None when a run has no readable config.yaml.
    A label that is not ENTRY@MODE raises (unless ``skip_other``), and so does one whose mode is not the
    entry's ``cache`` setting: the label is all the rows say about the mode."""
    from refinery.experiments.config import config_from_dict
    from refinery.experiments.store import load_config_dict

    cells, rows = {}, {}
    for d in run_dirs:
        try:
            data = load_config_dict(d)
        except OSError as e:  # a run without its config: the present grid stands in for the plan
            log.warning("no plan: %s", e)
            return None
        config = config_from_dict(data, source=str(Path(d) / "config.yaml"))  # a broken one is an error
        for t in config.tasks:
            n = None if t.n is None else t.n * len(config.seeds)
            # several runs: the most any plans; a whole split (None) leaves it to the rows present
            rows[t.name] = None if n is None or rows.get(t.name, 0) is None else max(n, rows.get(t.name, 0))
        for s in config.strategies:
            parsed = split_label(s.label)
            if parsed is None and not skip_other:
                raise _bad_label(s.label, f"{config.source}: {s.where}")
            if parsed is None:
                continue
            if parsed[1] != config.cache_for(s):
                raise ValueError(f"{config.source}: {s.where}: label {s.label!r} says cache {parsed[1]} but the "
                                 f"entry runs with cache {config.cache_for(s)}")
            cells.update({(*parsed, t.name, b): None for t in config.tasks for b in config.budgets_for(s)})
    return list(cells), rows


def cache_markdown(run_dirs: Sequence[str | Path], skip_other: bool = False, ran_only: bool = False) -> str:
    """The whole markdown (see the module docstring)."""
    raw, reads = read_runs(run_dirs)
    if not len(raw):
        raise ValueError(f"{', '.join(map(str, run_dirs))}: no rows")
    splits = sorted(set(raw.get("split", pd.Series(["?"])).fillna("?")))
    if len(splits) > 1:
        raise ValueError(f"{', '.join(map(str, run_dirs))}: rows of splits {splits}; one table reads one split")
    labelled = with_modes(raw, skip_other)
    df = labelled.drop_duplicates(["entry", "mode"] + PAIR_KEY)  # runs in parts: a row two of them hold counts once
    cells = cache_cells(df)
    plan = plan_cells(run_dirs, skip_other)
    columns = dict.fromkeys(zip(cells["task"], cells["budget"]))  # no config: each line present x each column
    planned, expected = plan or ([(*em, *tb) for em in dict.fromkeys(zip(cells["entry"], cells["mode"]))
                                  for tb in columns], {})
    expected = {t: expected.get(t) or int(cells.loc[cells["task"] == t, "n"].max()) for t in set(cells["task"])}
    if ran_only:  # a run made with --only: its other entries are not missing, they were never asked for
        ran = set(zip(cells["entry"], cells["mode"]))
        planned = [c for c in planned if c[:2] in ran]
    notes = dict(skipped=len(raw) - len(labelled), repeated=len(labelled) - len(df), split=splits[0],
                 dropped=sum(r.dropped for r in reads))
    parts = [_header(run_dirs, df, cells, planned, expected, plan is not None, notes),
             "### Strict accuracy % (difference to `none` in points, paired)\n\n"
             + to_markdown(_grid(cells, planned, expected)),
             "### Per entry and cache mode, over its cells\n\n" + _summary_markdown(cache_summary(cells))]
    return "\n\n".join(parts) + "\n"


def _grid(cells: pd.DataFrame, planned: list[tuple], expected: dict) -> pd.DataFrame:
    """Lines (entry, cache) in plan order, modes none/prefix/dual; columns 'task budget'; '-' where no rows."""
    present = list(zip(cells["entry"], cells["mode"], cells["task"], cells["budget"]))
    every = list(dict.fromkeys(planned + present))
    tasks = list(dict.fromkeys(c[2] for c in every))
    budgets = most_passes_first({c[3] for c in every})
    order = {e: i for i, e in enumerate(dict.fromkeys(c[0] for c in every))}  # entries in config order
    lines = sorted(dict.fromkeys(c[:2] for c in every), key=lambda em: (order[em[0]], CACHE_MODES.index(em[1])))
    text = {(r.entry, r.mode, r.task, r.budget): _cell_text(r, expected[r.task]) for r in cells.itertuples()}
    return pd.DataFrame([[text.get((e, m, t, b), "-") for t in tasks for b in budgets] for e, m in lines],
                        columns=[f"{t} {b}" for t in tasks for b in budgets],
                        index=pd.MultiIndex.from_tuples(lines, names=["entry", "cache"]))


def _cell_text(r, expected: int) -> str:
    """'81.2 (-1.6)'; ', 90 paired' when fewer rows paired than the cell has; ' n=90' below the planned rows."""
    text = f"{100 * r.acc:.1f}"
    if r.mode != "none" and r.paired > 0:
        text += f" ({r.diff:+.1f}" + (f", {int(r.paired)} paired" if r.paired < r.n else "") + ")"
    return text + (f" n={r.n}" if r.n < expected else "")


def _summary_markdown(summary: pd.DataFrame) -> str:
    if not len(summary):
        return "(no cached cell has uncached rows to pair with yet)"
    lines = ["| entry | cache | cells within 1 point | largest loss | flips cached-right / none-right (McNemar p) | "
             "output identical to `none` |", "|---|---|---|---|---|---|"]
    for s in summary.itertuples():
        loss = "none" if s.worst != s.worst else f"{s.worst:+.1f} ({s.worst_cell})"
        same = "-" if s.identical_share != s.identical_share else f"{100 * s.identical_share:.1f}%"
        lines.append(f"| {s.entry} | {s.mode} | {s.within}/{s.cells} | {loss} | {s.wins} / {s.losses} "
                     f"(p={s.p_value:.2g}) | {same} |")
    return "\n".join(lines)


def _header(run_dirs, df, cells, planned, expected, from_config: bool, notes: dict) -> str:
    tasks = ", ".join(f"{t} n={df[df['task'] == t]['example_id'].nunique()}" for t in dict.fromkeys(df["task"]))
    have = set(zip(cells["entry"], cells["mode"], cells["task"], cells["budget"]))
    missing = sum(c not in have for c in planned)
    partial = int((cells["n"] < cells["task"].map(expected)).sum())
    plan = "the runs' config.yaml" if from_config else "no config.yaml: each entry x mode present x each column"
    extra = [f"{v} {what}" for v, what in ((notes["skipped"], "rows of other labels left out"),
                                          (notes["repeated"], "rows repeated across runs counted once"),
                                          (notes["dropped"], "rows.jsonl lines dropped (torn/garbage/duplicate)")) if v]
    return (f"Runs {', '.join(f'`{d}`' for d in run_dirs)}: {len(df)} rows, split {notes['split']}; tasks {tasks}; "
            f"decode seeds {sorted(set(df['seed']))}. Plan ({plan}): {len(planned)} cells, {missing} missing ('-'), "
            f"{partial} partial (n=rows, fewer than planned)." + (f" {'; '.join(extra)}." if extra else "")
            + " A cached cell's (+-d) is its accuracy minus `none`'s on the same problems and seeds"
            " (', k paired' where fewer than its rows).")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refinery.analysis.cache_table", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="refinery ablate run directories (pooled)")
    p.add_argument("--out", default=None, help="write the markdown here (default: stdout)")
    p.add_argument("--skip-other-labels", action="store_true",
                   help="leave out rows (and config entries) whose label is not ENTRY@MODE instead of refusing")
    p.add_argument("--ran-only", action="store_true",
                   help="plan only the entry x cache lines that have rows (a run made with --only)")
    args = p.parse_args(argv)
    return write_or_print(p.prog, lambda: cache_markdown(args.run_dirs, args.skip_other_labels, args.ran_only),
                          args.out)


if __name__ == "__main__":
    sys.exit(main())
