"""Ablation rows -> pandas DataFrames (one row per generated output)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import pandas as pd

if TYPE_CHECKING:
    from refinery.experiments.store import RowsRead

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
    so that e.g. two runs' ``masked`` baselines stay apart. ``subset`` is the example's subset as the
    row carries it (rows of older runs: :func:`example_subsets`), None where its task defines none.
    Dropped rows are logged (see :func:`read_runs`)."""
    return read_runs(run_dirs)[0]


def read_runs(run_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, list[RowsRead]]:
    """:func:`load_runs` plus, per run, what its ``rows.jsonl`` held that is no row: a torn last line,
    garbage lines, later duplicates of a key (the first is kept, so n never counts a row twice).
    Each run that had any is also logged as a warning (stderr under the CLI)."""
    from refinery.experiments.store import read_rows

    if not run_dirs:
        raise ValueError("no run directories given")
    frames, reads = [], []
    names = [Path(d).resolve().name for d in run_dirs]
    if len(set(names)) < len(names):  # same directory names in different places: use the full path
        names = [str(Path(d)) for d in run_dirs]
    for d, name in zip(run_dirs, names):
        read = read_rows(d)
        if read.dropped:
            log.warning("%s: %s%s", read.path, read.summary(), _garbage_note(read))
        reads.append(read)
        df = rows_frame(_with_subsets(read.rows, d), run=name)
        df["run_dir"] = str(d)
        if "subset" not in df:  # a run without rows
            df["subset"] = None
        if len(run_dirs) > 1:
            df["entry"] = name + "/" + df["label"]
        frames.append(df)
    return pd.concat(frames, ignore_index=True), reads


def _garbage_note(read: RowsRead) -> str:
    """' (garbage: line 3: not a JSON row (...), ...)' - the first few, so the damage can be found."""
    if not read.garbage:
        return ""
    more = f", and {len(read.garbage) - 3} more" if len(read.garbage) > 3 else ""
    return f" (garbage: {'; '.join(read.garbage[:3])}{more})"


def _with_subsets(rows: list[dict], run_dir: str | Path) -> list[dict]:
    """Rows with ``subset``: rows carry it since run_cell wrote it; only rows written before that (older run
    directories) get it rebuilt from the run's config (:func:`example_subsets`), which the others never need."""
    if all("subset" in r for r in rows):
        return rows
    subsets = example_subsets(run_dir)
    return [r if "subset" in r else {**r, "subset": subsets.get((r["task"], r["example_id"]))} for r in rows]


def example_subsets(run_dir: str | Path) -> dict[tuple[str, str], str]:
    """(task, example_id) -> the example's ``meta["subset"]`` (e.g. pycode's "pair unseen in training"),
    rebuilt from the run's config, for rows written before rows carried ``subset``; empty (with a warning)
    when its examples cannot be rebuilt here."""
    from refinery.experiments.config import config_from_dict
    from refinery.experiments.runner import load_examples
    from refinery.experiments.store import load_config_dict

    try:
        config = config_from_dict(load_config_dict(run_dir), source=str(run_dir))
        examples = load_examples(config)
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s: no per-subset breakdown (cannot rebuild the examples: %s)", run_dir, e)
        return {}
    return {(task.name, ex.id): ex.meta["subset"] for task, exs in examples.values() for ex in exs
            if ex.meta.get("subset") is not None}


def budget_order(df: pd.DataFrame) -> list[str]:
    """Budgets from the most passes to the fewest ('1/1', '1/2', ...)."""
    pairs = df[["budget", "budget_value"]].drop_duplicates().sort_values("budget_value", ascending=False)
    return pairs["budget"].tolist()
