"""The results store of one ablation run: a directory that survives being killed at any moment.

    RUN/config.yaml          resolved config; first line "# ... sha256 <hash>"
    RUN/rows.jsonl           one JSON object per (task, example, strategy entry, budget, seed)
    RUN/traces/<batch>.npz   CompactTrace of one generate() call; rows point at it with
                             ``trace_file`` (relative path) and ``trace_row`` (row in the batch)

Crash safety, in write order: a batch's trace goes to a temporary name, is fsynced and
``os.replace``d into place *before* its rows are appended with a single ``os.write`` of
complete lines followed by ``fsync``. So a row never points at a missing trace, and a crash
can leave at most a torn tail of ``rows.jsonl``. :meth:`RunStore.open` repairs that tail
(drops a trailing partial line, and the rows of any batch that did not land whole), checks
every row parses and every key is unique, and refuses a directory written under another
config. The runner then skips the batches already stored.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Optional

from experiments.config import ExperimentConfig, dump_config

log = logging.getLogger(__name__)

CONFIG_FILE, ROWS_FILE, TRACE_DIR = "config.yaml", "rows.jsonl", "traces"
_HASH_LINE = re.compile(r"sha256 ([0-9a-f]{64})")


def row_key(task: str, example_id: str, label: str, budget: str, seed: int) -> str:
    """The identity of a row: no two rows of a run share it."""
    return json.dumps([task, example_id, label, budget, seed])


class RunStore:
    """Appends whole batches to a run directory; see the module docstring for the guarantees."""

    def __init__(self, run_dir: Path, done_batches: set[str], num_rows: int):
        self.run_dir = run_dir
        self.done_batches = done_batches  # batch ids whose rows are all stored
        self.num_rows = num_rows

    @classmethod
    def open(cls, run_dir: str | Path, config: ExperimentConfig) -> "RunStore":
        """Create ``run_dir`` for ``config``, or verify and repair a previous run of the same config."""
        run_dir = Path(run_dir)
        (run_dir / TRACE_DIR).mkdir(parents=True, exist_ok=True)
        _check_or_write_config(run_dir, config)
        for stale in (run_dir / TRACE_DIR).glob("*.tmp"):
            stale.unlink()  # a trace that was being written when the last run died
        rows = repair_rows(run_dir / ROWS_FILE)
        return cls(run_dir, {r["batch_id"] for r in rows}, len(rows))

    def write_batch(self, batch_id: str, rows: list[dict], trace=None) -> None:
        """Store one batch: its trace first (atomically), then all its rows in one appending write."""
        if trace is not None:
            rel = f"{TRACE_DIR}/{batch_id}.npz"
            final = self.run_dir / rel
            tmp = final.with_name(final.name + ".tmp")
            with open(tmp, "wb") as f:
                trace.save(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            for i, row in enumerate(rows):
                row["trace_file"], row["trace_row"] = rel, i
        for row in rows:
            row["batch_id"], row["batch_rows"] = batch_id, len(rows)
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        fd = os.open(self.run_dir / ROWS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = 0
            while written < len(data):  # regular files take it in one write; loop for the odd short write
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        self.done_batches.add(batch_id)
        self.num_rows += len(rows)


def _check_or_write_config(run_dir: Path, config: ExperimentConfig) -> None:
    path = run_dir / CONFIG_FILE
    new_hash = config.hash()
    if path.is_file():
        first = path.read_text().splitlines()[:1]
        m = _HASH_LINE.search(first[0]) if first else None
        old_hash = m.group(1) if m else None
        if old_hash != new_hash:
            raise ValueError(
                f"{run_dir}: holds a run of a different config (stored sha256 {str(old_hash)[:12]}, "
                f"this config {new_hash[:12]}{_diff_note(path, config)}); resume needs the same config: "
                "pass another --out directory or remove this one")
        return
    if (run_dir / ROWS_FILE).exists() and (run_dir / ROWS_FILE).stat().st_size:
        raise ValueError(f"{run_dir}: has {ROWS_FILE} but no {CONFIG_FILE}; refusing to mix runs")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_config(config))
    os.replace(tmp, path)
    _fsync_dir(run_dir)


def _diff_note(path: Path, config: ExperimentConfig) -> str:
    """'; differs in: budgets, tasks' - which top-level keys changed, to make the refusal actionable."""
    import yaml

    try:
        old = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return ""
    new = config.to_dict()
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return f"; differs in: {', '.join(changed)}" if changed else ""


def repair_rows(path: Path) -> list[dict]:
    """Verify ``rows.jsonl`` and cut any torn tail; return the rows kept.

    Drops a trailing partial line and the rows of batches stored incompletely (fewer rows than
    their ``batch_rows``), rewriting the file atomically if anything was dropped. Raises
    ValueError for damage a crash cannot cause: an unparsable complete line, a duplicate key."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run", path, len(raw) - end)
    rows = []
    for lineno, line in enumerate(raw[:end].splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not a JSON row ({e}); the file is damaged") from None
        if not isinstance(row, dict) or not {"key", "batch_id", "batch_rows"} <= set(row):
            raise ValueError(f"{path}:{lineno}: not a row of this store (needs key, batch_id, batch_rows)")
        rows.append(row)
    keys = Counter(r["key"] for r in rows)
    dup = [k for k, c in keys.items() if c > 1]
    if dup:
        raise ValueError(f"{path}: row key {dup[0]} appears {keys[dup[0]]} times; the file is damaged")
    per_batch = Counter(r["batch_id"] for r in rows)
    kept = [r for r in rows if per_batch[r["batch_id"]] == r["batch_rows"]]
    if len(kept) < len(rows):
        log.warning("%s: dropping %d rows of incompletely stored batches", path, len(rows) - len(kept))
    if end < len(raw) or len(kept) < len(rows):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    return kept


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_rows(run_dir: str | Path) -> list[dict]:
    """Every complete row of a run (read-only: safe while the run is still writing)."""
    path = Path(run_dir) / ROWS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no rows here (not an ablation run directory?)")
    raw = path.read_bytes()
    raw = raw[: raw.rfind(b"\n") + 1]  # a line still being written is not a row yet
    rows = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not a JSON row ({e})") from None
    return rows


def load_trace(run_dir: str | Path, row: dict):
    """-> (CompactTrace of the row's batch, the row's index in it). Raises if the run saved no traces."""
    from core.trace import CompactTrace

    rel: Optional[str] = row.get("trace_file")
    if not rel:
        raise FileNotFoundError(f"{run_dir}: row {row.get('key')} has no trace (run with save_traces: true)")
    return CompactTrace.load(Path(run_dir) / rel), int(row["trace_row"])


def load_config_dict(run_dir: str | Path) -> dict:
    """The resolved config a run was made with, as plain data."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (not an ablation run directory?)")
    return yaml.safe_load(path.read_text())
