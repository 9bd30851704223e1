"""The run store: torn tails are repaired, damage that a crash cannot cause is refused, configs never mix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.trace import CompactTrace
from experiments.config import config_from_dict
from experiments.store import RunStore, load_rows, load_trace, repair_rows, row_key

from ablation_helpers import one_torch_thread, small_config  # noqa: F401 (fixture)


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
    reopened = RunStore.open(tmp_path / "run", config)
    assert reopened.done_batches == {"b0", "b1"} and reopened.num_rows == 5


def test_truncated_trailing_line_is_repaired(tmp_path, config):
    store = RunStore.open(tmp_path / "run", config)
    store.write_batch("b0", _rows("b0", 2))
    path = tmp_path / "run" / "rows.jsonl"
    good = path.read_bytes()
    torn = json.dumps({**_rows("b1", 1, start=2)[0], "batch_id": "b1", "batch_rows": 2}) + "\n"
    path.write_bytes(good + torn.encode()[: len(torn) // 2])  # the process died mid-line
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
    store = RunStore.open(tmp_path / "run", config)
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
    path = tmp_path / "run" / "rows.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"{not json}\n" + lines[1])
    with pytest.raises(ValueError, match=r"rows.jsonl:1: not a JSON row"):
        RunStore.open(tmp_path / "run", config)
    path.write_bytes(lines[0] + lines[0])
    with pytest.raises(ValueError, match="appears 2 times"):
        RunStore.open(tmp_path / "run", config)


def test_a_run_directory_refuses_another_config(tmp_path, config):
    RunStore.open(tmp_path / "run", config).write_batch("b0", _rows("b0", 1))
    other = config.with_overrides(limit=1)
    with pytest.raises(ValueError, match=r"different config.*differs in: tasks"):
        RunStore.open(tmp_path / "run", other)
    assert RunStore.open(tmp_path / "run", config).done_batches == {"b0"}
