"""Ablation rows -> pandas DataFrames (one row per generated output)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

log = logging.getLogger(__name__)

_COLUMNS = ("task", "example_id", "strategy", "label", "budget", "budget_value", "seed", "correct",
            "answer_correct", "nfe", "max_nfe", "tokens_generated", "wall_seconds", "batch_seconds")


def rows_frame(rows: Iterable[dict], run: str = "") -> pd.DataFrame:
    """Rows (as stored in rows.jsonl) -> DataFrame with an ``entry`` column naming the strategy entry."""
    df = pd.DataFrame(list(rows))
    missing = [c for c in _COLUMNS if c not in df.columns]
    if len(df) and missing:
        raise ValueError(f"rows of run {run or '?'} lack columns {missing}")
    if not len(df):
        df = pd.DataFrame(columns=list(_COLUMNS))
    df["run"] = run
    df["entry"] = df["label"]
    for col in ("correct", "answer_correct"):
        df[col] = df[col].astype(bool)
    return df


def load_runs(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """Rows of one or more run directories. With several runs, entries are named ``run/label``
    so that e.g. two runs' ``masked`` baselines stay apart."""
    from experiments.store import load_rows

    if not run_dirs:
        raise ValueError("no run directories given")
    frames = []
    names = [Path(d).resolve().name for d in run_dirs]
    if len(set(names)) < len(names):  # same directory names in different places: use the full path
        names = [str(Path(d)) for d in run_dirs]
    for d, name in zip(run_dirs, names):
        df = rows_frame(load_rows(d), run=name)
        df["run_dir"] = str(d)
        if len(run_dirs) > 1:
            df["entry"] = name + "/" + df["label"]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def budget_order(df: pd.DataFrame) -> list[str]:
    """Budgets from the most passes to the fewest ('1/1', '1/2', ...)."""
    pairs = df[["budget", "budget_value"]].drop_duplicates().sort_values("budget_value", ascending=False)
    return pairs["budget"].tolist()
