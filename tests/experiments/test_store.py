"""The run store: one writer at a time, torn tails are repaired, damage that a crash cannot cause is refused
(or repaired on request, after a backup), configs never mix."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refinery.core.trace import CompactTrace
from refinery.experiments.config import config_from_dict, load_config
from refinery.experiments.store import RunLocked, RunStore, load_rows, load_trace, read_rows, repair_rows, row_key

from ablation_helpers import small_config, write_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many tiny decodes: one thread is fastest

REPO = Path(__file__).resolve().parents[2]


def _rows(batch: str, n: int, start: int = 0) -> list[dict]:
    return [{"key": row_key("arith", f"e{start + i}", "masked", "1/1", 0), "output": f"out {start + i}"}
            for i in range(n)]


def _trace(B: int) -> CompactTrace:
    tokens = np.arange(2 * B * 3, dtype=np.int32).reshape(2, B, 3)
    return CompactTrace(np.zeros((B, 3), np.int32), np.full(B, 3, np.int32), tokens, np.full((2, B), 3, np.int32),
                        np.ones((2, B), bool), np.array(["mask", "mask"]), {}, np.zeros(0, np.float32), 9, 1)


@pytest.fixture
def config(tmp_path):
    return config_from_dict(small_config(tmp_path), source="small.yaml")


def test_batches_round_trip_with_traces(tmp_path, config):
    store = RunStore.open(tmp_path / "run", config)
    store.write_batch("b0", _rows("b0", 2), _trace(2))
    store.write_batch("b1", _rows("b1", 3, start=2), _trace(3))
    rows = load_rows(tmp_path / "run")
    assert [r["key"] for r in rows] == [r["key"] for r in _rows("", 5)]
    assert [(r["batch_id"], r["batch_rows"], r["trace_row"]) for r in rows] == \
        [("b0", 2, 0), ("b0", 2, 1), ("b1", 3, 0), ("b1", 3, 1), ("b1", 3, 2)]
    trace, i = load_trace(tmp_path / "run", rows[3])
    assert i == 1 and np.array_equal(trace.tokens, _trace(3).tokens)
    assert not list((tmp_path / "run" / "traces").glob("*.tmp"))
    store.close()
    reopened = RunStore.open(tmp_path / "run", config)
    assert reopened.done_batches == {"b0", "b1"} and reopened.num_rows == 5


def test_truncated_trailing_line_is_repaired(tmp_path, config):
    store = RunStore.open(tmp_path / "run", config)
    store.write_batch("b0", _rows("b0", 2))
    path = tmp_path / "run" / "rows.jsonl"
    good = path.read_bytes()
    torn = json.dumps({**_rows("b1", 1, start=2)[0], "batch_id": "b1", "batch_rows": 2}) + "\n"
    path.write_bytes(good + torn.encode()[: len(torn) // 2])  # the process died mid-line
    store.close()
    reopened = RunStore.open(tmp_path / "run", config)
    assert reopened.done_batches == {"b0"}
    assert path.read_bytes() == good
    reopened.write_batch("b1", _rows("b1", 2, start=2))
    assert len(load_rows(tmp_path / "run")) == 4


def test_incompletely_stored_batch_is_dropped_whole(tmp_path, config):
    store = RunStore.open(tmp_path / "run", config)
    store.write_batch("b0", _rows("b0", 2))
    path = tmp_path / "run" / "rows.jsonl"
    good = path.read_bytes()
    partial = [{**r, "batch_id": "b1", "batch_rows": 3} for r in _rows("b1", 2, start=2)]  # 2 of 3 rows landed
    path.write_bytes(good + "".join(json.dumps(r) + "\n" for r in partial).encode())
    assert [r["batch_id"] for r in repair_rows(path)] == ["b0", "b0"]
    assert path.read_bytes() == good


def test_orphan_trace_and_temp_files_do_not_count_as_done(tmp_path, config):
    RunStore.open(tmp_path / "run", config).close()
    # Killed after the trace landed but before its rows: the batch is not done and is simply redone.
    _trace(2).save(tmp_path / "run" / "traces" / "b0.npz")
    (tmp_path / "run" / "traces" / "b1.npz.tmp").write_bytes(b"half a zip")
    reopened = RunStore.open(tmp_path / "run", config)
    assert reopened.done_batches == set()
    assert not (tmp_path / "run" / "traces" / "b1.npz.tmp").exists()
    reopened.write_batch("b0", _rows("b0", 2), _trace(2))
    assert load_trace(tmp_path / "run", load_rows(tmp_path / "run")[1])[1] == 1


def test_damage_a_crash_cannot_cause_is_refused(tmp_path, config):
    store = RunStore.open(tmp_path / "run", config)
    store.write_batch("b0", _rows("b0", 2))
    store.close()
    path = tmp_path / "run" / "rows.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"{not json}\n" + lines[1])
    with pytest.raises(ValueError, match=r"rows.jsonl:1: not a JSON row.*--repair"):
        RunStore.open(tmp_path / "run", config)
    path.write_bytes(lines[0] + lines[0])
    with pytest.raises(ValueError, match="appears 2 times.*--repair"):
        RunStore.open(tmp_path / "run", config)


def test_a_run_directory_refuses_a_config_that_alters_its_cells(tmp_path, config):
    with RunStore.open(tmp_path / "run", config) as store:
        store.write_batch("b0", _rows("b0", 1))
    before = (tmp_path / "run" / "config.yaml").read_text()
    changed = dataclasses.replace(config, gen_length=config.gen_length * 2)
    with pytest.raises(ValueError, match=r"would alter \(gen_length: 16 -> 32; differs in: gen_length\)"):
        RunStore.open(tmp_path / "run", changed)
    params = dataclasses.replace(config.strategies[0], params={"remasking": "random"})
    with pytest.raises(ValueError, match=r"strategies: masked\.params: \{'remasking': 'low_confidence'\} -> "):
        RunStore.open(tmp_path / "run", dataclasses.replace(config, strategies=(params,)))
    split = dataclasses.replace(config.tasks[0], split="dev")
    with pytest.raises(ValueError, match=r"tasks: arith\.split: 'test' -> 'dev'"):
        RunStore.open(tmp_path / "run", dataclasses.replace(config, tasks=(split,)))
    assert (tmp_path / "run" / "config.yaml").read_text() == before
    assert RunStore.open(tmp_path / "run", config).done_batches == {"b0"}


def test_a_grown_config_extends_the_run_and_the_stored_config_is_the_union(tmp_path, config):
    with RunStore.open(tmp_path / "run", config.with_overrides(limit=2, only=["masked"])) as store:
        store.write_batch("b0", _rows("b0", 2))
    extra = dataclasses.replace(config.strategies[0], label="masked-semiar", params={"block_length": 8})
    grown = dataclasses.replace(config, strategies=config.strategies + (extra,), budgets=("1/1", "1/8"))
    with RunStore.open(tmp_path / "run", grown) as store:
        assert store.done_batches == {"b0"} and len(store.done_keys) == 2
    stored = load_config(tmp_path / "run" / "config.yaml")
    assert [t.n for t in stored.tasks] == [5]
    assert [s.label for s in stored.strategies] == ["masked", "masked-random", "masked-semiar"]
    assert stored.budgets == ("1/1", "1/4", "1/8")
    assert stored.hash() in (tmp_path / "run" / "config.yaml").read_text().splitlines()[0]
    # a subset of what is stored (--only, a smaller --limit) reuses it and leaves the file alone
    before = (tmp_path / "run" / "config.yaml").read_text()
    RunStore.open(tmp_path / "run", config.with_overrides(limit=1, only=["masked-random"])).close()
    assert (tmp_path / "run" / "config.yaml").read_text() == before


_HOLDER = """
import sys, time
from refinery.experiments.config import load_config
from refinery.experiments.store import RunStore
store = RunStore.open(sys.argv[2], load_config(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(cfg_path: Path, run_dir: Path) -> subprocess.Popen:
    """A second, real process that opens the store and sleeps holding its lock."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(cfg_path), str(run_dir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "locked":
        proc.kill()
        pytest.fail(f"the lock holder did not start: {line!r} {proc.stderr.read()}")
    return proc


def test_a_second_writer_process_is_refused_and_changes_nothing(tmp_path):
    from refinery.experiments.config import load_config

    cfg_path = write_yaml(tmp_path / "small.yaml", small_config(tmp_path))
    config, run_dir = load_config(cfg_path), tmp_path / "run"
    with RunStore.open(run_dir, config) as store:
        store.write_batch("b0", _rows("b0", 2))
    proc = _hold_lock(cfg_path, run_dir)
    try:
        with open(run_dir / "rows.jsonl", "ab") as f:  # the holder is mid-write: a tail open() would cut
            f.write(b'{"key": "torn')
        before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        with pytest.raises(RunLocked) as refused:
            RunStore.open(run_dir, config)
        msg = str(refused.value)
        assert msg.startswith(f"{run_dir} is being written by pid {proc.pid} on host ") and " since " in msg
        assert "\n" not in msg
        with pytest.raises(RunLocked):
            RunStore.open(run_dir, config, repair=True)
        after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        assert after == before  # the torn tail is still there: nothing was touched
    finally:
        proc.send_signal(signal.SIGKILL)  # a killed holder: flock is freed, the stale .lock file stays
        proc.wait()
    assert (run_dir / ".lock").is_file()
    with RunStore.open(run_dir, config) as store:
        assert store.done_batches == {"b0"}
        holder = json.loads((run_dir / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["command"]


def test_two_handles_in_one_process_conflict_until_closed(tmp_path, config):
    store = RunStore.open(tmp_path / "run", config)
    with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
        RunStore.open(tmp_path / "run", config)
    store.close()
    RunStore.open(tmp_path / "run", config).close()


def _damaged_run(tmp_path, config) -> tuple[Path, list[bytes]]:
    """A run written by two writers at once (duplicates), plus a garbage line and a deleted trace."""
    run_dir = tmp_path / "run"
    with RunStore.open(run_dir, config) as store:
        store.write_batch("b0", _rows("b0", 2), _trace(2))
        store.write_batch("b1", _rows("b1", 1, start=2), _trace(1))
        store.write_batch("b2", _rows("b2", 2, start=3))
    path = run_dir / "rows.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)  # b0 b0 b1 b2 b2
    path.write_bytes(lines[0] + lines[1] + lines[0] + b"garbage\n" + lines[1] + lines[2] + lines[3] + lines[4]
                     + lines[3] + b'{"key": ')
    (run_dir / "traces" / "b1.npz").unlink()
    return run_dir, lines


def test_repair_backs_up_and_drops_duplicates_garbage_and_missing_traces(tmp_path, config):
    run_dir, lines = _damaged_run(tmp_path, config)
    damaged = (run_dir / "rows.jsonl").read_bytes()
    with pytest.raises(ValueError, match="--repair"):
        RunStore.open(run_dir, config)
    assert (run_dir / "rows.jsonl").read_bytes() == damaged  # a refusal changes nothing
    with RunStore.open(run_dir, config, repair=True) as store:
        report = store.repair
        assert store.done_batches == {"b0", "b2"}  # b1 lost its trace: it is redone
    assert (report.duplicates, len(report.garbage), report.missing_trace, report.torn) == (3, 1, 1, 1)
    assert report.garbage[0].startswith("line 4: not a JSON row")
    assert report.backup.name.startswith("rows.jsonl.bak-") and report.backup.read_bytes() == damaged
    assert (run_dir / "rows.jsonl").read_bytes() == lines[0] + lines[1] + lines[3] + lines[4]
    line = report.repair_line()
    assert "dropped 3 duplicate keys (kept the first), 1 garbage lines, 1 rows with a missing trace, " \
           "1 torn last line" in line and str(report.backup) in line
    with RunStore.open(run_dir, config, repair=True) as store:  # clean now: no second backup
        assert not store.repair.dropped and "nothing to repair" in store.repair.repair_line()
    assert len(list(run_dir.glob("rows.jsonl.bak-*"))) == 1


def test_repair_drops_a_batch_left_incomplete_by_a_missing_trace(tmp_path, config):
    with RunStore.open(tmp_path / "run", config) as store:
        store.write_batch("b0", _rows("b0", 2), _trace(2))
    rows = load_rows(tmp_path / "run")
    (tmp_path / "run" / "traces" / "b0.npz").unlink()
    (tmp_path / "run" / "rows.jsonl").write_text(json.dumps({**rows[0], "trace_file": None}) + "\n"
                                                 + json.dumps(rows[1]) + "\n")
    with RunStore.open(tmp_path / "run", config, repair=True) as store:
        assert (store.repair.missing_trace, store.repair.incomplete) == (1, 1)
        assert store.done_batches == set()
    assert (tmp_path / "run" / "rows.jsonl").read_bytes() == b""


def test_read_rows_counts_what_it_drops(tmp_path, config):
    run_dir, lines = _damaged_run(tmp_path, config)
    read = read_rows(run_dir)
    assert [r["key"] for r in read.rows] == [r["key"] for r in _rows("", 5)]
    assert (read.torn, len(read.garbage), read.duplicates) == (1, 1, 3)
    assert read.summary() == "rows read 5; dropped: 1 torn line, 3 duplicates (kept first), 1 garbage line"
    with pytest.raises(ValueError, match="rows.jsonl:4: not a JSON row"):
        load_rows(run_dir)  # the strict reader still refuses garbage
