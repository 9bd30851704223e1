"""The results store of one ablation run: a directory that survives being killed at any moment.

    RUN/config.yaml          resolved config; first line "# ... sha256 <hash>"
    RUN/rows.jsonl           one JSON object per (task, example, strategy entry, budget, seed)
    RUN/rows.rank<k>.jsonl   the same, written by rank k of a torchrun (see :mod:`experiments.shard`);
                             readers take the union of every rows file, a rerun skips any shard's rows
    RUN/traces/<batch>.npz   CompactTrace of one generate() call; rows point at it with
                             ``trace_file`` (relative path) and ``trace_row`` (row in the batch)

Crash safety, in write order: a batch's trace goes to a temporary name, is fsynced and
``os.replace``d into place *before* its rows are appended with a single ``os.write`` of
complete lines followed by ``fsync``. So a row never points at a missing trace, and a crash
can leave at most a torn tail of ``rows.jsonl``. :meth:`RunStore.open` repairs that tail
(drops a trailing partial line, and the rows of any batch that did not land whole), checks
every row parses and every key is unique, and refuses a directory written under a config that
would alter its cells (a config that only adds cells extends it: :mod:`experiments.extend`). The
runner then skips the rows already stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from refinery.core.torchrun import ProcessLayout
from refinery.experiments.config import ExperimentConfig, dump_config
from refinery.experiments.extend import merge_configs
from refinery.experiments.shard import lock_name, other_shards_rows, rows_files, rows_name

log = logging.getLogger(__name__)

CONFIG_FILE, ROWS_FILE, TRACE_DIR, LOCK_FILE = "config.yaml", "rows.jsonl", "traces", ".lock"
_REPAIR_HINT = ("; `refinery ablate ... --repair` drops duplicate keys and garbage lines after backing the "
                "file up")
_HASH_LINE = re.compile(r"sha256 ([0-9a-f]{64})")


def row_key(task: str, example_id: str, label: str, budget: str, seed: int) -> str:
    """The identity of a row: no two rows of a run share it."""
    return json.dumps([task, example_id, label, budget, seed])


class RunLocked(ValueError):
    """Another live process holds the run directory's writer lock."""


def acquire_lock(run_dir: Path, name: str = LOCK_FILE) -> int:
    """Take the exclusive writer lock on ``run_dir/name`` -> its file descriptor (close it to release).
    A sharded run locks one file per rank (``.lock.rank<k>``), so its ranks never wait on each other.

    ``flock`` is advisory and belongs to the open file: the kernel frees it when the holder exits or is
    killed, so a ``.lock`` file left behind never blocks. The holder's pid, host, start time and command
    line are written into the file so that a refused writer can name it. Raises :class:`RunLocked`."""
    fd = os.open(run_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        os.close(fd)
        raise RunLocked(f"{run_dir} is being written by {_describe_holder(holder)}; wait for it to end or "
                        "pass another --out directory") from None
    except OSError as e:  # a file system without flock (some network mounts): go on, unprotected
        log.warning("%s: cannot lock %s (%s); nothing stops a second writer here", run_dir, LOCK_FILE, e)
    except BaseException:
        os.close(fd)
        raise
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]
    info = dict(pid=os.getpid(), host=socket.gethostname(), command=command,
                since=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def _describe_holder(text: str) -> str:
    """The lock file's JSON -> 'pid 1234 on host X since ... (command: ...)'."""
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on host {info['host']} since {info['since']} "
                f"(command: {info['command']})")
    except (ValueError, KeyError, TypeError):  # the holder has the lock but has not written its name yet
        return "another process (it has not named itself yet)"


class RunStore:
    """Appends whole batches to a run directory; see the module docstring for the guarantees."""

    def __init__(self, run_dir: Path, done_batches: set[str], num_rows: int, lock_fd: Optional[int] = None,
                 shard: ProcessLayout = ProcessLayout()):
        self.run_dir = run_dir
        self.shard = shard  # which rows file this writer appends to
        self.done_batches = done_batches  # batch ids whose rows are all stored
        self.done_keys: set[str] = set()  # row keys stored (a grown run fills batches stored in part)
        self.num_rows = num_rows
        self._lock_fd = lock_fd  # holds the flock on RUN/.lock; closing it lets the next writer in
        self.repair: Optional[RowsRead] = None  # what ``open(..., repair=True)`` dropped

    @classmethod
    def open(cls, run_dir: str | Path, config: ExperimentConfig, repair: bool = False,
             shard: ProcessLayout = ProcessLayout()) -> "RunStore":
        """Create ``run_dir`` for ``config``, or verify and repair a previous run of the same config.

        Takes the directory's writer lock first, so a second writer is refused before anything changes
        (:class:`RunLocked`). ``repair``: drop duplicate keys, garbage lines and rows whose trace is
        missing (after a backup, see :func:`repair_damage`) instead of refusing them. ``shard``: the
        rank this writer is (its own rows file and lock); the rows of every shard count as done."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with _opening(run_dir):
            return cls._open_locked(run_dir, config, repair, shard)

    @classmethod
    def _open_locked(cls, run_dir: Path, config: ExperimentConfig, repair: bool,
                     shard: ProcessLayout) -> "RunStore":
        lock_fd = acquire_lock(run_dir, lock_name(shard))
        try:
            (run_dir / TRACE_DIR).mkdir(exist_ok=True)
            _check_or_write_config(run_dir, config)
            for stale in (run_dir / TRACE_DIR).glob(_tmp_suffix(shard, "*")):
                stale.unlink()  # a trace that was being written when this writer's last run died
            report = repair_damage(run_dir, rows_name(shard)) if repair else None
            rows = repair_rows(run_dir / rows_name(shard))
            others = other_shards_rows(run_dir, shard)
        except BaseException:
            os.close(lock_fd)
            raise
        store = cls(run_dir, {r["batch_id"] for r in rows + others}, len(rows), lock_fd, shard)
        store.done_keys = {str(r["key"]) for r in rows + others}
        store.repair = report
        return store

    def close(self) -> None:
        """Release the writer lock (the process ending releases it too)."""
        if getattr(self, "_lock_fd", None) is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self) -> None:  # a store dropped without close() must not keep its directory locked
        self.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write_batch(self, batch_id: str, rows: list[dict], trace=None) -> None:
        """Store one batch: its trace first (atomically), then all its rows in one appending write."""
        if trace is not None:
            rel = f"{TRACE_DIR}/{batch_id}.npz"
            final = self.run_dir / rel
            tmp = final.with_name(_tmp_suffix(self.shard, final.name))
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
        fd = os.open(self.run_dir / rows_name(self.shard), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = 0
            while written < len(data):  # regular files take it in one write; loop for the odd short write
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        self.done_batches.add(batch_id)
        self.done_keys.update(str(r["key"]) for r in rows if "key" in r)
        self.num_rows += len(rows)


def _tmp_suffix(shard: ProcessLayout, name: str) -> str:
    """A trace's temporary name; per rank, so no rank removes another's half-written trace."""
    return f"{name}.rank{shard.rank}.tmp" if shard.sharded else f"{name}.tmp"


@contextlib.contextmanager
def _opening(run_dir: Path):
    """Writers open a run directory one at a time (a lock on the directory itself, waited for): ranks
    starting together would race to write ``config.yaml``, or find a shard's lock taken by another rank
    checking whether that shard's writer is gone."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # no flock here (see acquire_lock): ranks may race, as before locks existed
            log.warning("%s: cannot lock the directory (%s)", run_dir, e)
        yield
    finally:
        os.close(fd)


def _check_or_write_config(run_dir: Path, config: ExperimentConfig) -> None:
    """Write ``config.yaml`` for a new run; for an existing one, extend it or refuse (see
    :mod:`experiments.extend`): the stored file becomes the union of both configs."""
    path = run_dir / CONFIG_FILE
    if path.is_file():
        stored = _stored_config(path)
        if stored is None or stored.hash() == config.hash():
            return  # same config; a file this code cannot read is checked by hash alone
        union, problems = merge_configs(stored, config)
        if problems:
            raise ValueError(
                f"{run_dir}: holds a run of a different config that this one would alter "
                f"({'; '.join(problems)}{_diff_note(path, config)}); a larger --limit or new tasks, "
                "entries, budgets or seeds extend a run, a change to existing cells needs another --out "
                "directory (or remove this one)")
        if union.hash() != stored.hash():
            log.info("%s: extending the stored config (%s)", run_dir, _diff_note(path, config).lstrip("; "))
            _write_config(path, union)
        return
    if any(p.stat().st_size for p in rows_files(run_dir)):
        raise ValueError(f"{run_dir}: has rows but no {CONFIG_FILE}; refusing to mix runs")
    _write_config(path, config)


def _stored_config(path: Path) -> Optional[ExperimentConfig]:
    """The config a run directory holds, or None when it cannot be read back (then only its hash line
    is compared, as before configs could grow)."""
    import yaml

    from refinery.experiments.config import config_from_dict

    first = path.read_text().splitlines()[:1]
    m = _HASH_LINE.search(first[0]) if first else None
    try:
        stored = config_from_dict(yaml.safe_load(path.read_text()), source=str(path))
    except (ValueError, yaml.YAMLError):
        if m is None:
            raise ValueError(f"{path}: cannot be read back as a config and has no sha256 line") from None
        return None
    if m is not None and m.group(1) != stored.hash():
        raise ValueError(f"{path}: edited by hand (its sha256 line does not match its content); "
                         "restore it or pass another --out directory")
    return stored


def _write_config(path: Path, config: ExperimentConfig) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_config(config))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _diff_note(path: Path, config: ExperimentConfig) -> str:
    """'; differs in: budgets, tasks' - which top-level keys changed, to make the message actionable."""
    import yaml

    try:
        old = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return ""
    new = config.to_dict()
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return f"; differs in: {', '.join(changed)}" if changed else ""


def _lines(raw: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """Split ``rows.jsonl`` bytes -> ([(line number, complete line)], bytes of a partial last line).

    The one place that decides what a line is: a line still being written (no newline yet) is not a
    row, and blank lines are skipped."""
    end = raw.rfind(b"\n") + 1
    lines = [(n, line) for n, line in enumerate(raw[:end].split(b"\n")[:-1], 1) if line.strip()]
    return lines, len(raw[end:].strip())


def _parse(line: bytes) -> dict:
    """One line -> its row; ValueError (with the reason) for anything that is not a JSON object."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not a JSON row ({e})") from None
    if not isinstance(row, dict):
        raise ValueError(f"not a JSON object but a {type(row).__name__}")
    return row


def _identity(row: dict) -> str:
    """The key a row is unique by (rows written before ``key`` existed: its parts)."""
    if "key" in row:
        return str(row["key"])
    return json.dumps([row.get(k) for k in ("task", "example_id", "label", "budget", "seed")], default=str)


@dataclass
class RowsRead:
    """The rows of a ``rows.jsonl`` kept by a lenient read, and what was dropped on the way."""

    path: Path
    rows: list[dict]
    torn: int = 0  # a partial last line: a run still writing, or one killed mid-line
    garbage: list[str] = field(default_factory=list)  # "line N: why" for each complete line that is no row
    duplicates: int = 0  # rows repeating an earlier row's key (the first is kept)
    missing_trace: int = 0  # rows whose trace file is gone (repair only)
    incomplete: int = 0  # rows of batches stored incompletely (repair only; the runner redoes them)
    backup: Optional[Path] = None  # where repair copied the file before rewriting it

    @property
    def dropped(self) -> int:
        return self.torn + len(self.garbage) + self.duplicates + self.missing_trace + self.incomplete

    def summary(self) -> str:
        """'rows read 5; dropped: 1 torn line, 3 duplicates (kept first), 0 garbage lines'."""
        text = (f"rows read {len(self.rows)}; dropped: {self.torn} torn line{'s' * (self.torn != 1)}, "
                f"{self.duplicates} duplicate{'s' * (self.duplicates != 1)} (kept first), "
                f"{len(self.garbage)} garbage line{'s' * (len(self.garbage) != 1)}")
        if self.missing_trace or self.incomplete:
            text += (f", {self.missing_trace} with a missing trace, "
                     f"{self.incomplete} of incompletely stored batches")
        return text

    def repair_line(self) -> str:
        """The one line ``refinery ablate --repair`` prints."""
        if not self.dropped:
            return f"{self.path}: nothing to repair ({len(self.rows)} rows; no backup made)"
        return (f"{self.path}: repaired: kept {len(self.rows)} rows; dropped {self.duplicates} duplicate keys "
                f"(kept the first), {len(self.garbage)} garbage lines, {self.missing_trace} rows with a missing "
                f"trace, {self.torn} torn last line, {self.incomplete} rows of incompletely stored batches "
                f"(redone); backup: {self.backup}")


def _scan(path: Path, store_fields: bool) -> RowsRead:
    """Lenient read of ``path``: skips a torn tail and garbage lines, keeps the first of duplicate keys.
    ``store_fields``: a row also needs key, batch_id and batch_rows (what the store itself writes)."""
    lines, tail = _lines(path.read_bytes())
    out, seen = RowsRead(path, [], torn=int(tail > 0)), set()
    for lineno, line in lines:
        try:
            row = _parse(line)
            if store_fields and not {"key", "batch_id", "batch_rows"} <= set(row):
                raise ValueError("not a row of this store (needs key, batch_id, batch_rows)")
        except ValueError as e:
            out.garbage.append(f"line {lineno}: {e}")
            continue
        ident = _identity(row)
        if ident in seen:
            out.duplicates += 1
            continue
        seen.add(ident)
        out.rows.append(row)
    return out


def read_rows(run_dir: str | Path) -> RowsRead:
    """Every row of a run that can be trusted, and counts of what was not (for ``refinery report``:
    a torn last line, garbage lines and later duplicates of a key are dropped and counted, never
    silently; read-only, so safe while the run is still writing). A sharded run's rows files are
    read as one: ``rows.jsonl`` first, then ``rows.rank<k>.jsonl`` by rank."""
    paths = rows_files(run_dir)
    if not paths:
        raise FileNotFoundError(f"{Path(run_dir) / ROWS_FILE}: no rows here (not an ablation run directory?)")
    out = _scan(paths[0], store_fields=False)
    seen = {_identity(r) for r in out.rows}
    for path in paths[1:]:
        more = _scan(path, store_fields=False)
        out.torn += more.torn
        out.garbage += [f"{path.name}: {g}" for g in more.garbage]
        out.duplicates += more.duplicates
        for row in more.rows:
            if _identity(row) in seen:  # the same row in two shards (two runs at once): keep the first
                out.duplicates += 1
                continue
            seen.add(_identity(row))
            out.rows.append(row)
    return out


def repair_damage(run_dir: Path, rows_name: str = ROWS_FILE) -> RowsRead:
    """``--repair``: drop garbage lines, later duplicates of a key (the first is kept), rows whose trace
    file is missing, a torn tail and batches left incomplete by all that; the original goes to
    ``rows.jsonl.bak-<UTC time>`` first. Nothing to drop: the file is left alone and no backup made.
    ``rows_name``: the rows file to repair (a rank repairs its own shard)."""
    path = run_dir / rows_name
    if not path.is_file():
        return RowsRead(path, [])
    read = _scan(path, store_fields=True)
    rows = [r for r in read.rows if not r.get("trace_file") or (run_dir / str(r["trace_file"])).is_file()]
    read.missing_trace = len(read.rows) - len(rows)
    per_batch = Counter(r["batch_id"] for r in rows)
    read.rows = [r for r in rows if per_batch[r["batch_id"]] == r["batch_rows"]]
    read.incomplete = len(rows) - len(read.rows)
    if read.dropped:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        read.backup = path.with_name(f"{path.name}.bak-{stamp}")
        n = 1
        while read.backup.exists():  # two repairs within a second keep both backups
            read.backup, n = path.with_name(f"{path.name}.bak-{stamp}-{n}"), n + 1
        shutil.copy2(path, read.backup)
        _rewrite(path, read.rows)
    return read


def repair_rows(path: Path) -> list[dict]:
    """Verify ``rows.jsonl`` and cut any torn tail; return the rows kept.

    Drops a trailing partial line and the rows of batches stored incompletely (fewer rows than
    their ``batch_rows``), rewriting the file atomically if anything was dropped. Raises
    ValueError for damage a crash cannot cause: an unparsable complete line, a duplicate key
    (``refinery ablate --repair`` drops those after a backup)."""
    if not path.exists():
        return []
    lines, tail = _lines(path.read_bytes())
    if tail:
        log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run", path, tail)
    rows = []
    for lineno, line in lines:
        try:
            row = _parse(line)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}; the file is damaged{_REPAIR_HINT}") from None
        if not {"key", "batch_id", "batch_rows"} <= set(row):
            raise ValueError(f"{path}:{lineno}: not a row of this store (needs key, batch_id, batch_rows)"
                             f"{_REPAIR_HINT}")
        rows.append(row)
    keys = Counter(r["key"] for r in rows)
    dup = [k for k, c in keys.items() if c > 1]
    if dup:
        raise ValueError(f"{path}: row key {dup[0]} appears {keys[dup[0]]} times; the file is damaged (two "
                         f"writers at once?){_REPAIR_HINT}")
    per_batch = Counter(r["batch_id"] for r in rows)
    kept = [r for r in rows if per_batch[r["batch_id"]] == r["batch_rows"]]
    if len(kept) < len(rows):
        log.warning("%s: dropping %d rows of incompletely stored batches", path, len(rows) - len(kept))
    if tail or len(kept) < len(rows):
        _rewrite(path, kept)
    return kept


def _rewrite(path: Path, rows: list[dict]) -> None:
    """Replace ``path`` with ``rows`` atomically (a crash leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_rows(run_dir: str | Path) -> list[dict]:
    """Every complete row of a run, duplicates included (read-only: safe while the run is still writing);
    every shard's rows file, in :func:`read_rows`'s order. Raises ValueError naming the file and line
    for a complete line that is not a JSON row; see :func:`read_rows` for the lenient read that counts
    what it drops."""
    paths = rows_files(run_dir)
    if not paths:
        raise FileNotFoundError(f"{Path(run_dir) / ROWS_FILE}: no rows here (not an ablation run directory?)")
    rows = []
    for path in paths:
        for lineno, line in _lines(path.read_bytes())[0]:
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path}:{lineno}: not a JSON row ({e})") from None
    return rows


def load_trace(run_dir: str | Path, row: dict):
    """-> (CompactTrace of the row's batch, the row's index in it). Raises if the run saved no traces."""
    from refinery.core.trace import CompactTrace

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
