"""Saved ablation runs, read without recomputing anything.

A run directory holds ``rows.jsonl`` (one JSON object per generated row: task, example_id, strategy,
label, params, budget, seed, output, correct, nfe, trace_file, trace_row, ...) and ``traces/*.npz``
(:meth:`core.trace.CompactTrace.save`). ``experiments.store`` is the owner of that format; this module
uses it when it is importable and otherwise reads the two files itself.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Optional

from core.trace import CompactTrace

log = logging.getLogger(__name__)

ROWS_FILE = "rows.jsonl"


def find_runs(runs_dir: Optional[str | Path]) -> list[str]:
    """Run directories (those with a rows.jsonl) under ``runs_dir``, itself included, newest first."""
    if not runs_dir:
        return []
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    found = [p.parent for p in root.rglob(ROWS_FILE)]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p) for p in found]


def load_rows(run_dir: str | Path) -> list[dict]:
    """All rows of a run. Raises FileNotFoundError / ValueError naming the file and line."""
    path = Path(run_dir).expanduser() / ROWS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no rows.jsonl in this run directory")
    return _load_rows_cached(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _load_rows_cached(path: str, mtime_ns: int) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            rows.append(row)
    return rows


def row_key(row: dict) -> str:
    """How a row's strategy is named in the picker: its label, else strategy + budget."""
    return str(row.get("label") or f"{row.get('strategy', '?')} @ {row.get('budget', '?')}")


def pick_rows(rows: list[dict], task: Optional[str] = None, example_id: Optional[str] = None) -> list[dict]:
    return [r for r in rows if (task is None or str(r.get("task")) == task)
            and (example_id is None or str(r.get("example_id")) == example_id)]


def load_row_trace(run_dir: str | Path, row: dict) -> tuple[CompactTrace, int]:
    """(trace, row index inside it) for one row; ValueError when the row has no trace."""
    rel = row.get("trace_file")
    if not rel:
        raise ValueError(f"{run_dir}: row {row_key(row)!r} of example {row.get('example_id')!r} has no trace_file "
                         "(was the ablation run without traces?)")
    path = Path(run_dir).expanduser() / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: trace file named by rows.jsonl is missing")
    trace = _load_trace_cached(str(path), path.stat().st_mtime_ns)
    index = int(row.get("trace_row", 0))
    if not 0 <= index < trace.initial.shape[0]:
        raise ValueError(f"{path}: trace_row {index} out of range (trace has {trace.initial.shape[0]} rows)")
    return trace, index


@lru_cache(maxsize=32)
def _load_trace_cached(path: str, mtime_ns: int) -> CompactTrace:
    return CompactTrace.load(path)
