"""A hand-made ablation run (rows + one edit trace) with known counts, for the analysis tests.

Test modules import the ``run_dir`` fixture from here (a conftest.py per test directory would clash with
the ``from tiny_models import ...`` other test directories use)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from refinery.core.trace import CompactTrace

PARAMS = {"masked": {"remasking": "low_confidence", "block_length": None},
          "masked-semiar": {"remasking": "low_confidence", "block_length": 8}, "edit": {"edit_passes": 2}}
# (entry, strategy, budget) -> correct flags of 4 examples of task "arith"
CORRECT = {
    ("masked", "masked", "1/1"): [1, 1, 1, 0],
    ("masked", "masked", "1/4"): [1, 0, 0, 0],
    ("masked-semiar", "masked", "1/1"): [1, 1, 0, 0],
    ("masked-semiar", "masked", "1/4"): [0, 0, 0, 0],
    ("edit", "edit", "1/1"): [1, 1, 1, 1],
    ("edit", "edit", "1/4"): [1, 1, 0, 0],
}

DRAFT_CORRECT = {"1/1": [1, 0, 1, 1], "1/4": [1, 0, 1, 0]}  # the edit rows' drafts before their edit passes


def edit_trace() -> CompactTrace:
    """2 rows, 3 passes: one mask pass, then two edit passes (row 1 is no longer charged in the last one).

    Edit pass 1: row 0 replaces 2 tokens and deletes 1; row 1 inserts 1. Edit pass 2: row 0 inserts 2 (and
    row 1, inactive, records nothing)."""
    B, L = 2, 6
    tokens = np.full((3, B, L), 5, np.int32)
    ev = {
        "unmasked": np.array([[0, b, p, 5] for b in range(B) for p in range(L)], np.int32),
        "replaced": np.array([[1, 0, 0, 7], [1, 0, 1, 7]], np.int32),
        "deleted": np.array([[1, 0, 2, 5]], np.int32),
        "inserted": np.array([[1, 1, 0, 8], [2, 0, 0, 9], [2, 0, 3, 9]], np.int32),
        "remasked": np.zeros((0, 4), np.int32),
    }
    active = np.array([[True, True], [True, True], [True, False]])
    return CompactTrace(np.full((B, L), 0, np.int32), np.full(B, L, np.int32), tokens, np.full((3, B), L, np.int32),
                        active, np.array(["mask", "edit", "edit"]), ev, np.zeros(B * L, np.float32), 0, 1)


def make_run(run_dir: Path) -> Path:
    (run_dir / "traces").mkdir(parents=True)
    edit_trace().save(run_dir / "traces" / "edit.npz")
    rows = []
    for (entry, strategy, budget), flags in CORRECT.items():
        params = PARAMS[entry]
        for i, ok in enumerate(flags):
            max_nfe = {"1/1": 16, "1/4": 4}[budget]
            row = dict(key=json.dumps(["arith", f"e{i}", entry, budget, 0]), task="arith", split="test",
                       example_id=f"e{i}", strategy=strategy, label=entry, params=params, budget=budget,
                       budget_value={"1/1": 1.0, "1/4": 0.25}[budget], seed=0, gen_length=16, output="x",
                       correct=bool(ok), answer_correct=bool(ok) or i == 3, extracted=None, error=None,
                       nfe=max_nfe - (i % 2), max_nfe=max_nfe, tokens_generated=10, wall_seconds=0.5 * max_nfe / 16,
                       batch_seconds=2.0 * max_nfe / 16, batch_id=f"{entry}-{budget}", batch_rows=4)
            row.update(draft_output=None, draft_correct=None)
            if strategy == "edit":
                row.update(draft_output="d", draft_correct=bool(DRAFT_CORRECT[budget][i]))
            if strategy == "edit" and budget == "1/1" and i < 2:
                row.update(trace_file="traces/edit.npz", trace_row=i)
            rows.append(row)
    (run_dir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir
