"""Sharded ablations: cell assignment, per-rank shard files, and torchrun on CPU (gloo) end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from refinery.core.torchrun import ProcessLayout
from refinery.experiments.config import load_config
from refinery.experiments.shard import assign, lock_name, my_cells, rows_files, rows_name
from refinery.experiments.store import RunStore, acquire_lock, load_rows, read_rows, row_key

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "experiments" / "ablations" / "embedded_default.yaml"
ARGS = [str(CONFIG), "--limit", "2", "--only", "masked,edit", "--device", "cpu", "--no-progress"]
WALL = ("wall_seconds", "batch_seconds")


def test_assign_balances_cost_and_is_deterministic():
    costs = [8, 7, 6, 5, 4, 3, 2, 1]
    owner = assign(costs, 2)
    loads = [sum(c for c, r in zip(costs, owner) if r == k) for k in range(2)]
    assert sorted(loads) == [18, 18] and owner == assign(costs, 2)
    assert assign([1, 1, 1], 5) == [0, 1, 2]  # more ranks than cells: some get none


def test_my_cells_split_every_cell_exactly_once_weighted_by_budget():
    cells = [SimpleNamespace(budget=b, examples=(1,) * n, i=i)
             for i, (b, n) in enumerate([("1/1", 4), ("1/8", 4), ("1/2", 2), ("1/1", 1), ("1/4", 4)])]
    shares = [my_cells(cells, ProcessLayout(r, 3), gen_length=16) for r in range(3)]
    assert sorted(c.i for s in shares for c in s) == list(range(5))
    assert [c.i for c in shares[0]] == [0]  # the costliest cell alone outweighs the rest of a share
    assert my_cells(cells, ProcessLayout(), 16) == cells


def test_each_rank_has_its_own_rows_file_and_lock():
    assert (rows_name(ProcessLayout(1, 2)), lock_name(ProcessLayout(1, 2))) == ("rows.rank1.jsonl", ".lock.rank1")
    assert (rows_name(ProcessLayout()), lock_name(ProcessLayout())) == ("rows.jsonl", ".lock")


def _rows(n: int, prefix: str) -> list[dict]:
    return [dict(key=row_key("t", f"{prefix}{i}", "masked", "1/1", 0), task="t", example_id=f"{prefix}{i}")
            for i in range(n)]


def test_ranks_write_their_own_shards_and_see_each_others_rows(tmp_path):
    config = load_config(CONFIG)
    run = tmp_path / "run"
    with (RunStore.open(run, config, shard=ProcessLayout(0, 2)) as s0,
          RunStore.open(run, config, shard=ProcessLayout(1, 2)) as s1):
        s0.write_batch("a", _rows(2, "a"))
        s1.write_batch("b", _rows(3, "b"))
    assert [p.name for p in rows_files(run)] == ["rows.rank0.jsonl", "rows.rank1.jsonl"]
    with open(run / "rows.rank1.jsonl", "ab") as f:
        f.write(b'{"key": "torn')  # rank 1 was killed mid-line
    with RunStore.open(run, config, shard=ProcessLayout(0, 2)) as s0:
        assert s0.done_batches == {"a", "b"} and s0.num_rows == 2
    assert (run / "rows.rank1.jsonl").read_bytes().endswith(b"}\n")  # its writer is gone: its tail was cut
    read = read_rows(run)
    assert len(read.rows) == 5 and read.dropped == 0 and len(load_rows(run)) == 5


def test_a_live_ranks_shard_is_read_but_never_rewritten(tmp_path):
    config = load_config(CONFIG)
    run = tmp_path / "run"
    with RunStore.open(run, config, shard=ProcessLayout(1, 2)) as s1:
        s1.write_batch("b", _rows(2, "b"))
    with open(run / "rows.rank1.jsonl", "ab") as f:
        f.write(b'{"key": "half')  # rank 1 is writing this line right now
    fd = acquire_lock(run, ".lock.rank1")  # ... and holds its lock
    try:
        before = (run / "rows.rank1.jsonl").read_bytes()
        with RunStore.open(run, config, shard=ProcessLayout(0, 2)) as s0:
            assert s0.done_batches == {"b"}
        assert (run / "rows.rank1.jsonl").read_bytes() == before
        assert read_rows(run).torn == 1
    finally:
        os.close(fd)


def _ablate(out: Path, nproc: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    launch = [sys.executable, "-m", "refinery"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", "refinery"]
    proc = subprocess.run(launch + ["ablate", *ARGS, "--out", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _by_key(run: Path) -> dict[str, dict]:
    rows = load_rows(run)
    keyed = {r["key"]: {k: v for k, v in r.items() if k not in WALL} for r in rows}
    assert len(keyed) == len(rows), "a row was stored twice"
    return keyed


@pytest.fixture(scope="module")
def single_and_sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    _ablate(root / "single", 1)
    _ablate(root / "sharded", 2)
    return root / "single", root / "sharded"


def test_torchrun_two_ranks_write_the_rows_of_one_process(single_and_sharded):
    single, sharded = single_and_sharded
    assert [p.name for p in rows_files(sharded)] == ["rows.rank0.jsonl", "rows.rank1.jsonl"]
    assert all(p.stat().st_size for p in rows_files(sharded))  # both ranks got work
    expected = _by_key(single)
    assert len(expected) == 32  # 2 tasks x 2 examples x 2 entries x 4 budgets
    assert _by_key(sharded) == expected


def test_report_reads_every_shard(single_and_sharded, tmp_path, capsys):
    from refinery.cli import main

    assert main(["report", str(single_and_sharded[1]), "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "32 rows" in report and "rows read 32; dropped: 0 torn lines" in report


def test_a_killed_rank_loses_only_its_unfinished_cells(single_and_sharded, tmp_path):
    single, sharded = single_and_sharded
    run = tmp_path / "run"
    shutil.copytree(sharded, run)
    shard1 = run / "rows.rank1.jsonl"
    rows = [json.loads(line) for line in shard1.read_text().splitlines()]
    kept_batch = rows[0]["batch_id"]
    kept = [r for r in rows if r["batch_id"] == kept_batch]
    # rank 1 died after its first batch, in the middle of writing its second
    shard1.write_text("".join(json.dumps(r) + "\n" for r in kept) + json.dumps(rows[len(kept)])[:40])
    rank0_before = (run / "rows.rank0.jsonl").read_bytes()
    _ablate(run, 2)
    assert (run / "rows.rank0.jsonl").read_bytes() == rank0_before  # rank 0 had nothing left to do
    again = [json.loads(line) for line in shard1.read_text().splitlines()]
    assert again[: len(kept)] == kept  # the finished batch was kept, not redone
    assert _by_key(run) == _by_key(single)
    assert read_rows(run).dropped == 0


KILL_AFTER_FIRST_BATCH = """
import os, sys
from refinery.experiments.config import load_config
from refinery.experiments.runner import run_ablation
config = load_config(sys.argv[1]).with_overrides(limit=2, only=["masked", "edit"], device="cpu")
run_ablation(config, sys.argv[2], progress=False, on_batch=lambda cell, rows: os._exit(9))
"""


def test_rank_one_killed_after_its_first_batch_then_a_rerun_completes(single_and_sharded, tmp_path):
    single, _ = single_and_sharded
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_BATCH, str(CONFIG), str(run)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 9, proc.stderr[-3000:]
    first = (run / "rows.rank1.jsonl").read_text()
    assert len({json.loads(line)["batch_id"] for line in first.splitlines()}) == 1 and rows_files(run)[-1].name == \
        "rows.rank1.jsonl"
    _ablate(run, 2)
    assert (run / "rows.rank1.jsonl").read_text().startswith(first)  # its finished batch stayed, once
    assert _by_key(run) == _by_key(single)
