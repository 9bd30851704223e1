"""Tables over ablation rows: accuracy with Wilson intervals, gains over a baseline, NFE, speed.

Accuracy is strict (``correct``); ``answer_acc`` is the answer-only score. Gains are in
accuracy points over the baseline entry at the same task and budget; they are also paired by
problem and seed: ``wins`` / ``losses`` count the problems only the entry / only the baseline
solves, and ``p_value`` is the exact two-sided McNemar test on those discordant pairs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

from refinery.analysis.load import budget_order

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (well-behaved at 0 and n, unlike the normal one)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))  # rounding never leaves p outside


def mcnemar_exact(wins: int, losses: int) -> float:
    """Exact two-sided McNemar p-value: P(a split at least this uneven) for wins + losses fair coin flips."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per (task, entry, budget): n, acc, ci_lo, ci_hi, answer_acc, nfe_mean, max_nfe,
    wall_s (mean per row), tokens_per_s (generated tokens over decode time)."""
    out = []
    for (task, entry, budget), g in df.groupby(["task", "entry", "budget"], sort=False):
        n, k = len(g), int(g["correct"].sum())
        lo, hi = wilson_interval(k, n)
        seconds = float(g["wall_seconds"].sum())
        out.append(dict(task=task, entry=entry, strategy=g["strategy"].iloc[0], budget=budget,
                        budget_value=float(g["budget_value"].iloc[0]), n=n, acc=k / n, ci_lo=lo, ci_hi=hi,
                        answer_acc=float(g["answer_correct"].mean()), nfe_mean=float(g["nfe"].mean()),
                        max_nfe=int(g["max_nfe"].max()), wall_s=seconds / n,
                        tokens_per_s=float(g["tokens_generated"].sum()) / seconds if seconds > 0 else float("nan")))
    table = pd.DataFrame(out)
    if not len(table):
        return table
    rank = {e: i for i, e in enumerate(dict.fromkeys(df["entry"]))}  # entries in config order, not a-z
    table["_rank"] = table["entry"].map(rank)
    return table.sort_values(["task", "_rank", "budget_value"], ascending=[True, True, False], kind="stable") \
        .drop(columns="_rank").reset_index(drop=True)


def find_baseline(df: pd.DataFrame, baseline: Optional[str] = None) -> str:
    """The entry gains are measured against: ``baseline`` if given, else the mask-only (``masked``) entry
    whose params differ from its config's defaults in the fewest fields (the plain low-confidence
    decoding: no blocks, no guidance, ...); the first such entry on a tie."""
    entries = list(dict.fromkeys(df["entry"]))
    if baseline is not None:
        if baseline not in entries:
            raise ValueError(f"baseline {baseline!r} is not an entry of these runs; entries: {entries}")
        return baseline
    best, best_score = None, None
    for entry, g in df.groupby("entry", sort=False):
        if g["strategy"].iloc[0] != "masked":
            continue
        params = g["params"].iloc[0] if "params" in g else {}
        score = non_default_settings("masked", params if isinstance(params, dict) else {})
        if best_score is None or score < best_score:
            best, best_score = entry, score
    if best is None:
        raise ValueError(f"no masked entry to use as baseline; pass one of {entries}")
    return best


def non_default_settings(strategy: str, params: dict) -> int:
    """How many fields of ``strategy``'s config ``params`` (a row's ``params``: the whole config, JSON form)
    sets to something other than the default; a field the row lacks counts as default. The field names
    come from the config class, so a new option counts without a change here."""
    from refinery.strategies.registry import strategy_class

    defaults = json.loads(json.dumps(dataclasses.asdict(strategy_class(strategy).config_class())))  # rows' form
    return sum(params.get(name, value) != value for name, value in defaults.items())


def gain_table(df: pd.DataFrame, baseline: Optional[str] = None) -> pd.DataFrame:
    """Accuracy (strict and answer-only) minus the baseline entry's, in points, per (task, entry, budget)."""
    acc = accuracy_table(df)
    base = find_baseline(df, baseline)
    ref = acc[acc["entry"] == base].set_index(["task", "budget"])
    key = ["task", "budget", "example_id", "seed"]
    solved = df[df["entry"] == base].drop_duplicates(key).set_index(key)["correct"]
    rows = []
    for r in acc[acc["entry"] != base].itertuples(index=False):
        if (r.task, r.budget) not in ref.index:
            continue
        b = ref.loc[(r.task, r.budget)]
        g = df[(df["entry"] == r.entry) & (df["task"] == r.task) & (df["budget"] == r.budget)]
        pair = g.drop_duplicates(key).join(solved.rename("base_correct"), on=key, how="inner")
        wins = int((pair["correct"] & ~pair["base_correct"]).sum())
        losses = int((~pair["correct"] & pair["base_correct"]).sum())
        rows.append(dict(task=r.task, entry=r.entry, budget=r.budget, budget_value=r.budget_value, n=r.n,
                         acc=r.acc, baseline_acc=float(b["acc"]), gain=100 * (r.acc - float(b["acc"])),
                         answer_gain=100 * (r.answer_acc - float(b["answer_acc"])), paired=len(pair),
                         wins=wins, losses=losses, p_value=mcnemar_exact(wins, losses)))
    return pd.DataFrame(rows, columns=["task", "entry", "budget", "budget_value", "n", "acc", "baseline_acc",
                                       "gain", "answer_gain", "paired", "wins", "losses", "p_value"])


def refinement_table(df: pd.DataFrame) -> pd.DataFrame:
    """For entries whose rows carry a scored draft (``edit``): per (task, entry, budget) the draft's and the
    final text's strict accuracy and the outputs the refinement passes fixed (draft wrong, final right)
    and broke (draft right, final wrong). Empty when no row has a draft."""
    cols = ["task", "entry", "budget", "budget_value", "n", "draft_acc", "acc", "fixed", "broken"]
    if "draft_correct" not in df:
        return pd.DataFrame(columns=cols)
    rows = df[df["draft_correct"].notna()]
    out = []
    for (task, entry, budget), g in rows.groupby(["task", "entry", "budget"], sort=False):
        draft, final = g["draft_correct"].astype(bool), g["correct"].astype(bool)
        out.append(dict(task=task, entry=entry, budget=budget, budget_value=float(g["budget_value"].iloc[0]),
                        n=len(g), draft_acc=float(draft.mean()), acc=float(final.mean()),
                        fixed=int((~draft & final).sum()), broken=int((draft & ~final).sum())))
    return pd.DataFrame(out, columns=cols)


def main_table(df: pd.DataFrame) -> pd.DataFrame:
    """Strict accuracy (%) per (task, entry) x budget, budgets from most passes to fewest."""
    acc = accuracy_table(df)
    if not len(acc):
        return pd.DataFrame()
    wide = acc.pivot_table(index=["task", "entry"], columns="budget", values="acc", sort=False) * 100
    return wide[[b for b in budget_order(df) if b in wide.columns]]


def to_markdown(df: pd.DataFrame, floatfmt: str = ".1f", index: bool = True) -> str:
    """A GitHub markdown table (pandas' own needs the optional ``tabulate`` package)."""
    frame = df.reset_index() if index else df
    cols = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in frame.columns]

    def fmt(v) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main_table_markdown(df: pd.DataFrame) -> str:
    """The table ``refinery ablate`` prints: strict accuracy (%) per strategy entry x budget, per task.
    Where the cells of a task hold different numbers of rows (a run still writing, a grown run, a dropped
    row), each cell short of the task's most says its own n: '50.0 (n=4)'."""
    table = main_table(df)
    if not len(table):
        return "(no rows)"
    n = df.groupby("task")["example_id"].nunique()
    per_cell = df.groupby(["task", "entry", "budget"]).size()
    parts = []
    for task in table.index.get_level_values("task").unique():
        sub = table.loc[task]
        sub.index.name = "strategy"
        cells = per_cell.loc[task]
        count = f"n={int(n[task])} examples"
        if cells.min() < cells.max():
            count += f"; cells differ: {int(cells.min())} to {int(cells.max())} rows, fewer marked (n=...)"
            sub = _with_cell_n(sub, cells, int(cells.max()))
        parts.append(f"{task} (strict accuracy %, {count})\n\n{to_markdown(sub)}")
    return "\n\n".join(parts)


def _with_cell_n(sub: pd.DataFrame, cells: pd.Series, most: int) -> pd.DataFrame:
    """Accuracy cells as text, '(n=k)' after those with fewer than ``most`` rows (cells: (entry, budget) -> rows)."""
    out = sub.astype(object)
    for entry in sub.index:
        for budget in sub.columns:
            v = sub.loc[entry, budget]
            k = int(cells.get((entry, budget), 0))
            out.loc[entry, budget] = "" if v != v else f"{v:.1f}" + (f" (n={k})" if k < most else "")
    return out


def write_or_print(prog: str, make_text, out: Optional[str]) -> int:
    """The tail of a table command: ``make_text()`` to ``out`` (or stdout) -> 0; a ValueError or a missing
    file -> one ``PROG: error: ...`` line on stderr -> 2."""
    try:
        text = make_text()
    except (ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if out:
        Path(out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
