"""Sharding an ablation over processes (``torchrun -m refinery ablate ...``): who am I, which cells are mine.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a plain process has none and is rank 0 of 1.
``torch.distributed`` (gloo, which runs on any host) is used only to meet at a final barrier: the cells
are split by a deterministic rule every rank computes on its own, so no rank waits for another mid-run.

Each rank writes its own shard files into the run directory (``rows.rank<k>.jsonl``, see
:mod:`experiments.store`); a single process keeps writing ``rows.jsonl``. The split is over *every*
planned cell, not only the unfinished ones, so ranks that read the run directory at different moments
still agree on who owns what; each rank then skips the cells of its share that any shard holds.

    info = ProcessLayout.from_env()
    mine = my_cells(cells, info, gen_length=48)
"""

from __future__ import annotations

import heapq
import logging
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Sequence, TypeVar

from refinery.core.torchrun import ProcessLayout

log = logging.getLogger(__name__)

T = TypeVar("T")


def cell_cost(cell, gen_length: int) -> float:
    """Expected cost of a cell: budget (fraction of the full NFE) x generated length x batch size."""
    return float(Fraction(cell.budget)) * gen_length * len(cell.examples)


def assign(costs: Sequence[float], world: int) -> list[int]:
    """Costs of items -> the rank of each item, balancing the total cost per rank.

    Greedy longest-first: the costliest item goes to the least loaded rank (ties: lowest rank, then
    earliest item), which keeps every rank within one item's cost of the others. Deterministic, so
    every rank computes the same answer alone."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    heap = [(0.0, r) for r in range(world)]
    owner = [0] * len(costs)
    for i in order:
        load, r = heapq.heappop(heap)
        owner[i] = r
        heapq.heappush(heap, (load + costs[i], r))
    return owner


def my_cells(cells: Sequence[T], info: ProcessLayout, gen_length: int) -> list[T]:
    """The cells of ``cells`` this rank runs, in their planned order (all of them outside torchrun)."""
    if not info.sharded:
        return list(cells)
    owner = assign([cell_cost(c, gen_length) for c in cells], info.world)
    return [c for c, r in zip(cells, owner) if r == info.rank]


def barrier(info: ProcessLayout) -> None:
    """Wait until every rank got here (no-op outside torchrun); the group is set up on first use (gloo)."""
    if not info.sharded:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world)
    dist.barrier()


def finish(info: ProcessLayout) -> None:
    """Final barrier, then tear the process group down (so a process may run a second ablation)."""
    if not info.sharded:
        return
    import torch.distributed as dist

    barrier(info)
    dist.destroy_process_group()


_SHARD_FILE = re.compile(r"rows\.rank(\d+)\.jsonl")


def rows_files(run_dir: str | Path) -> list[Path]:
    """The rows files of a run directory that exist: ``rows.jsonl`` first, then each rank's by rank."""
    run_dir = Path(run_dir)
    ranked = sorted((int(m.group(1)), p) for p in run_dir.glob("rows.rank*.jsonl")
                    if (m := _SHARD_FILE.fullmatch(p.name)))
    plain = [run_dir / "rows.jsonl"] if (run_dir / "rows.jsonl").is_file() else []
    return plain + [p for _, p in ranked]


def rows_name(info: ProcessLayout) -> str:
    """The rows file this process appends to: its own per rank when sharded."""
    return f"rows.rank{info.rank}.jsonl" if info.sharded else "rows.jsonl"


def lock_name(info: ProcessLayout) -> str:
    """The writer lock this process holds: one per shard, so ranks never wait on each other."""
    return lock_name_for(rows_name(info))


def lock_name_for(rows_file: str) -> str:
    """The writer lock that guards the rows file named ``rows_file``."""
    m = _SHARD_FILE.fullmatch(rows_file)
    return f".lock.rank{m.group(1)}" if m else ".lock"


def other_shards_rows(run_dir: Path, shard: ProcessLayout) -> list[dict]:
    """The rows of every other rows file. One whose writer is gone (its lock is free) is repaired like
    our own, so a killed rank's torn tail is cut whoever reruns; one still being written is read
    leniently, counting only whole batches."""
    import fcntl
    from collections import Counter

    from refinery.experiments.store import _scan, repair_rows

    out = []
    for path in rows_files(run_dir):
        if path.name == rows_name(shard):
            continue
        fd = os.open(run_dir / lock_name_for(path.name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer: never rewrite its file
            rows = _scan(path, store_fields=True).rows
            per_batch = Counter(r["batch_id"] for r in rows)
            out += [r for r in rows if per_batch[r["batch_id"]] == r["batch_rows"]]
        else:
            out += repair_rows(path)
        finally:
            os.close(fd)
    return out
