"""The Stage-3 / Stage-2 optimiser-step cost benchmark runs and reports its figures (tiny CPU model).

The speed target (a Stage-3 step at most 2x a Stage-2 step) is checked and printed by the script,
``python tests/benchmarks/train_step_cost.py ratio --tiny`` (CPU) or ``... ratio`` (GPU, ~1B); no test
asserts a timing, since a busy machine would make it fail at random. Run with ``--benchmark-enable`` to
time the draft step.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step_cost as T  # noqa: E402


def test_step_cost_ratio_reports_its_figures(tmp_path, benchmark):
    import dataclasses

    from refinery.core.train.engine import Trainer

    s2, s3 = T.tiny_configs(tmp_path, batch=8)
    res = T.step_cost_ratio(s2, s3, steps=3, warmup=1)
    print(res)
    assert res["intermediate_ratio"] == s3.stage3.intermediate_ratio
    for key in ("stage2_step_s", "stage3_draft_step_s", "draft_over_stage2", "mixed_over_stage2"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    # the mixed ratio is the intermediate_ratio-weighted mean of the draft one and 1 (whatever the speed)
    r = res["intermediate_ratio"]
    assert res["mixed_over_stage2"] == pytest.approx(r * res["draft_over_stage2"] + (1 - r))
    lines = T.target_report(res)
    assert [line.split(" = ")[0] for line in lines] == list(T.TARGETS)
    assert all(line.endswith((": met", ": MISSED")) and "(target <= " in line for line in lines)
    worst = dataclasses.replace(s3, stage3=dataclasses.replace(s3.stage3, intermediate_ratio=1.0))
    tr = Trainer(worst)
    tr._prepare(None)
    metrics = benchmark(tr.train_step)
    assert metrics["draft_step"] == 1.0 and math.isfinite(metrics["loss"])


def test_target_report_flags_a_missed_target():
    res = {"mixed_over_stage2": 10.5, "draft_over_stage2": 1.5}
    assert T.target_report(res) == ["mixed_over_stage2 = 10.50x (target <= 2x): MISSED",
                                    "draft_over_stage2 = 1.50x (target <= 3x): met"]


def test_gpu_workspace_reuses_a_copied_runs_gsm8k(tmp_path):
    """An accelerator host has no ../shared/data: a prepared directory copied there is reused as it is, and a
    tokenizer that does not load is retrained from text.jsonl (the texts it was trained on)."""
    import json

    import pytest

    sys.path.insert(0, str(T.TRAIN))
    from prepare_gsm8k import ensure_prepared

    from refinery.core.tokenizer import load_tokenizer

    out, missing = tmp_path / "gsm8k", tmp_path / "no-such-train.jsonl"
    with pytest.raises(FileNotFoundError, match="not prepared"):
        ensure_prepared(out, data=missing)
    out.mkdir()
    rows = [{"question": f"Tom has {i} apples. How many?", "answer": f"He has {i}.\n#### {i}"} for i in range(30)]
    texts = [r["question"] + "\n" + r["answer"] for r in rows]
    (out / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (out / "sft.jsonl").write_text("".join(json.dumps({"history": [{"role": "user", "content": r["question"]}],
                                                       "response": r["answer"]}) + "\n" for r in rows))
    paths = ensure_prepared(out, data=missing, vocab=300)  # no tokenizer yet: trained from text.jsonl
    first = (paths["tokenizer"] / "tokenizer.json").read_bytes()
    assert load_tokenizer(paths["tokenizer"]) is not None
    ensure_prepared(out, data=missing, vocab=300)  # complete: left alone
    assert (paths["tokenizer"] / "tokenizer.json").read_bytes() == first


def test_mfu_command_dry_run_on_a_tiny_shape(tmp_path, monkeypatch, capsys):
    """The ~1B mfu command end to end with --model-config/--set making it tiny (what a CPU dry run does)."""
    import argparse
    import json

    sys.path.insert(0, str(T.REPO / "tests" / "core"))
    import _train_helpers as H

    ws = H.make_workspace(tmp_path)
    monkeypatch.setattr(T, "gpu_workspace", lambda: None)
    sets = [f"tokenizer={ws['tokenizer']}", f"data.train_files=[{ws['text']}]", f"engine.out_dir={tmp_path / 'out'}",
            "data.seq_len=16", "optim.micro_batch_size=2", "optim.warmup_steps=1", "engine.tensorboard=false"]
    shape = {"d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden_size": 64, "max_sequence_length": 64}
    a = argparse.Namespace(steps=3, warmup=1, json=str(tmp_path / "mfu.json"), model_config=json.dumps(shape), set=sets)
    T.cmd_mfu(a)
    res = json.loads((tmp_path / "mfu.json").read_text())
    assert res["steps"] == 3 and res["tokens_per_s"] > 0 and 0 < res["mfu"] < 1
    # attention adds 12 * layers * seq * width FLOPs per token to the 6 N of the plain definition
    extra = 12 * 1 * 16 * 32 * res["tokens_per_s"] / res["peak_flops"]
    assert abs(res["mfu_with_attention"] - (res["mfu"] + extra)) < 1e-9 * res["mfu"] + 1e-15
    assert res["kernels"] == "eager"
    out = capsys.readouterr().out
    assert "MFU = 6*N*tokens/s / peak" in out and "with attention" in out


def test_attention_flops_of_the_1b_shape():
    assert T.attention_flops_per_token(20, 2048, 2048) == 12 * 20 * 2048 * 2048  # ~1.01 GFLOP per token
