"""Saved ablation runs, read without recomputing anything (the format belongs to ``experiments.store``).

A run directory holds ``config.yaml``, ``rows.jsonl`` (one JSON object per generated row: task,
example_id, strategy, label, params, budget, seed, output, correct, nfe, trace_file, trace_row, ...) and
``traces/*.npz`` (:meth:`core.trace.CompactTrace.save`, one file per generate() batch).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Optional

from refinery.core.trace import CompactTrace
from refinery.experiments.shard import rows_files
from refinery.experiments.store import ROWS_FILE

log = logging.getLogger(__name__)


def find_runs(runs_dir: Optional[str | Path]) -> list[str]:
    """Run directories (those with a rows.jsonl) under ``runs_dir``, itself included, newest first."""
    if not runs_dir:
        return []
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    found = sorted({p.parent for p in root.rglob("rows*.jsonl") if rows_files(p.parent)})  # torchrun shards too
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p) for p in found]


def load_rows(run_dir: str | Path) -> list[dict]:
    """All complete rows of a run (cached while rows.jsonl is unchanged). FileNotFoundError / ValueError
    name the file (and line)."""
    run_dir = Path(run_dir).expanduser()
    paths = rows_files(run_dir)  # rows.jsonl, or the shards of a torchrun run
    if not paths:
        raise FileNotFoundError(f"{run_dir / ROWS_FILE}: no rows.jsonl in this run directory")
    try:
        return _load_rows_cached(str(run_dir), tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths))
    except UnicodeDecodeError:
        from refinery.core.errors import read_text

        for path in paths:
            read_text(path)  # raises the UsageError naming the file and the offending byte
        raise


@lru_cache(maxsize=8)
def _load_rows_cached(run_dir: str, stamps: tuple) -> list[dict]:
    from refinery.experiments.store import load_rows as store_rows

    rows = store_rows(run_dir)
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{Path(run_dir) / ROWS_FILE}:{n}: expected a JSON object")
    return rows


def run_model(run_dir: str | Path) -> Optional[str]:
    """The tokenizer (or model) directory / shipped name the run was made with, from its config.yaml."""
    from refinery.experiments.store import load_config_dict

    try:
        config = load_config_dict(Path(run_dir).expanduser())
    except (FileNotFoundError, ValueError, OSError):
        return None
    if not isinstance(config, dict):
        return None
    named = config.get("tokenizer") or config.get("model")
    return str(named) if named else None


def row_label(row: dict) -> str:
    """How a row's strategy is named in the picker: label (or strategy), budget, and seed (not the store's
    ``experiments.store.row_key``, which identifies a row)."""
    name = row.get("label") or row.get("strategy", "?")
    seed = f" seed {row['seed']}" if row.get("seed") is not None else ""
    return f"{name} @ {row.get('budget', '?')}{seed}"


def pick_rows(rows: list[dict], task: Optional[str] = None, example_id: Optional[str] = None) -> list[dict]:
    return [r for r in rows if (task is None or str(r.get("task")) == task)
            and (example_id is None or str(r.get("example_id")) == example_id)]


def load_row_trace(run_dir: str | Path, row: dict) -> tuple[CompactTrace, int]:
    """(trace, row index inside it) for one row; FileNotFoundError when the run stored no trace for it."""
    from refinery.experiments.store import load_trace

    rel = row.get("trace_file")
    if rel and not (Path(run_dir).expanduser() / rel).is_file():
        raise FileNotFoundError(f"{Path(run_dir) / rel}: trace file named by rows.jsonl is missing")
    trace, index = load_trace(Path(run_dir).expanduser(), row)
    if not 0 <= index < trace.initial.shape[0]:
        raise ValueError(f"{Path(run_dir) / rel}: trace_row {index} out of range "
                         f"(the trace has {trace.initial.shape[0]} rows)")
    return trace, index
