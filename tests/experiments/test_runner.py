"""The runner: rows carry everything the analysis needs, runs are deterministic, and a run killed at any
moment (SIGKILL, in a subprocess) finishes with exactly the rows of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refinery.experiments.config import config_from_dict, load_config
from refinery.experiments.runner import WALL_TIME_FIELDS, load_examples, plan_cells, run_ablation
from refinery.experiments.store import load_rows, load_trace

from ablation_helpers import small_config, write_yaml
from tiny_models import single_thread

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many tiny decodes: one thread is fastest

REPO = Path(__file__).resolve().parents[2]


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_TIME_FIELDS} for r in rows]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_checkpoint):
    """One uninterrupted run of the small config (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg_path = write_yaml(tmp / "small.yaml", small_config(tiny_checkpoint))
    with single_thread():
        run_dir = run_ablation(load_config(cfg_path), tmp / "run", progress=False)
    return cfg_path, run_dir, load_rows(run_dir)


def test_rows_cover_every_cell_once_with_equal_budgets_per_batch(reference_run):
    cfg_path, run_dir, rows = reference_run
    config = load_config(cfg_path)
    n = config.tasks[0].n
    assert len(rows) == n * len(config.strategies) * len(config.budgets) * len(config.seeds)
    assert len({r["key"] for r in rows}) == len(rows)
    cells = plan_cells(config, load_examples(config))
    assert {r["batch_id"] for r in rows} == {c.batch_id for c in cells}
    subsets = {(t.name, ex.id): ex.meta.get("subset") for t, exs in load_examples(config).values() for ex in exs}
    assert all(r["subset"] == subsets[(r["task"], r["example_id"])] for r in rows)  # analysis never rebuilds them
    for r in rows:
        assert r["max_nfe"] == {"1/1": 16, "1/4": 4}[r["budget"]] and 1 <= r["nfe"] <= r["max_nfe"]
        assert isinstance(r["output"], str) and isinstance(r["correct"], bool)
        assert 0 <= r["tokens_generated"] <= config.gen_length
        assert r["batch_seconds"] >= r["wall_seconds"] > 0
        trace, i = load_trace(run_dir, r)
        assert int(trace.active[:, i].sum()) == r["nfe"]  # the trace charges what the row reports
    saved = (run_dir / "config.yaml").read_text()
    assert config.hash() in saved.splitlines()[0]


def test_same_config_and_seed_give_identical_rows(reference_run, tmp_path):
    cfg_path, _, rows = reference_run
    again = load_rows(run_ablation(load_config(cfg_path), tmp_path / "again", progress=False))
    assert _strip(again) == _strip(rows)


def test_rerunning_a_finished_run_does_nothing(reference_run):
    cfg_path, run_dir, rows = reference_run
    before = (run_dir / "rows.jsonl").read_bytes()
    run_ablation(load_config(cfg_path), run_dir, progress=False)
    assert (run_dir / "rows.jsonl").read_bytes() == before


def _start(cfg_path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "refinery", "ablate", str(cfg_path), "--out", str(out),
                             "--no-progress"], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_after(proc: subprocess.Popen, rows_file: Path, min_lines: int, timeout: float = 120) -> int:
    """SIGKILL ``proc`` as soon as ``rows_file`` holds ``min_lines`` lines; returns the lines seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = rows_file.read_bytes().count(b"\n") if rows_file.exists() else 0
        if lines >= min_lines or proc.poll() is not None:
            break
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return lines


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_rows(reference_run, tmp_path):
    cfg_path, _, reference = reference_run
    out, rows_file = tmp_path / "killed", tmp_path / "killed" / "rows.jsonl"
    seen = _kill_after(_start(cfg_path, out), rows_file, min_lines=1)
    assert 0 < seen < len(reference), "the run was not interrupted mid-way"
    seen2 = _kill_after(_start(cfg_path, out), rows_file, min_lines=seen + 5)
    assert seen2 < len(reference), "the second run was not interrupted mid-way"
    proc = _start(cfg_path, out)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert _strip(load_rows(out)) == _strip(reference)
    assert sorted(p.name for p in (out / "traces").iterdir()) == \
        sorted({Path(r["trace_file"]).name for r in reference})


def test_changed_config_is_refused_on_resume(reference_run, tmp_path, tiny_checkpoint):
    cfg_path, run_dir, _ = reference_run
    other = config_from_dict(small_config(tiny_checkpoint, gen_length=8), source="other.yaml")
    with pytest.raises(ValueError, match="would alter.*gen_length: 16 -> 8"):
        run_ablation(other, run_dir, progress=False)


_STORE_FIELDS = ("batch_id", "batch_rows", "trace_file", "trace_row")



def test_a_run_split_by_budgets_gives_the_rows_of_one_run(reference_run, tmp_path):
    cfg_path, _, reference = reference_run
    full = load_config(cfg_path)
    low, high = full.budgets[-1:], full.budgets[:-1]
    with single_thread():
        run_ablation(full.with_overrides(budgets=list(low)), tmp_path / "split", progress=False)
        first = load_rows(tmp_path / "split")
        run_ablation(full.with_overrides(budgets=list(high)), tmp_path / "split", progress=False)
    rows = load_rows(tmp_path / "split")
    assert {r["budget"] for r in first} == set(low) and len(rows) == len(reference)
    by_key = {r["key"]: r for r in _strip(reference)}
    assert {r["key"] for r in rows} == set(by_key)
    for r in _strip(rows):
        assert {k: v for k, v in r.items() if k not in _STORE_FIELDS} == \
            {k: v for k, v in by_key[r["key"]].items() if k not in _STORE_FIELDS}
    with single_thread():  # the whole config then finds every cell done and accepts the directory
        run_ablation(full, tmp_path / "split", progress=False)
    assert load_rows(tmp_path / "split") == rows

def test_a_larger_limit_and_an_added_entry_extend_a_run_to_the_uninterrupted_rows(reference_run, tmp_path):
    cfg_path, _, reference = reference_run
    full = load_config(cfg_path)
    with single_thread():
        run_ablation(full.with_overrides(limit=3, only=["masked"]), tmp_path / "grown", progress=False)
        first = load_rows(tmp_path / "grown")
        run_ablation(full, tmp_path / "grown", progress=False)
    grown = load_rows(tmp_path / "grown")
    assert len(first) == 3 * 2 and len(grown) == len(reference)
    assert grown[: len(first)] == first  # stored rows are never rewritten
    by_key = {r["key"]: r for r in _strip(reference)}
    for r in _strip(grown):
        assert {k: v for k, v in r.items() if k not in _STORE_FIELDS} == \
            {k: v for k, v in by_key[r["key"]].items() if k not in _STORE_FIELDS}
    for r in grown:  # every row still points at its own batch's trace
        trace, i = load_trace(tmp_path / "grown", r)
        assert int(trace.active[:, i].sum()) == r["nfe"]
    assert load_config(tmp_path / "grown" / "config.yaml").hash() == full.hash()


def test_invalid_config_fails_before_any_work(tmp_path, tiny_checkpoint):
    data = small_config(tiny_checkpoint)
    data["strategies"][0]["params"]["block_length"] = 5
    with pytest.raises(ValueError, match=r"strategies\[0\]\.params\.block_length"):
        run_ablation(config_from_dict(data, source="bad.yaml"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_edit_rows_carry_their_scored_draft(tiny_checkpoint, tmp_path):
    """An edit row keeps the mask phase's draft (as the trace has it at the end of that phase) and its score."""
    import numpy as np

    from refinery.core.tokenizer import decode_response, load_tokenizer

    cfg = small_config(tiny_checkpoint, strategies=[{"name": "masked"}, {"name": "edit", "params": {"edit_passes": 2}}],
                       budgets=["1/1"])
    run_dir = run_ablation(config_from_dict(cfg), tmp_path / "run", progress=False)
    rows = load_rows(run_dir)
    tok = load_tokenizer(tiny_checkpoint)
    edits = [r for r in rows if r["strategy"] == "edit"]
    assert len(edits) == 5 and all(r["draft_output"] is None and r["draft_correct"] is None
                                   for r in rows if r["strategy"] == "masked")
    for r in edits:
        trace, i = load_trace(run_dir, r)
        last_mask = int(np.flatnonzero(trace.phases == "mask")[-1])
        n = int(trace.lengths[last_mask, i])
        assert r["draft_output"] == decode_response(tok, trace.tokens[last_mask, i, :n].tolist())
        assert isinstance(r["draft_correct"], bool)
