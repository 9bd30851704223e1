"""Training throughput: the Stage-3/Stage-2 optimiser-step cost ratio, and Stage-1 tokens/s + MFU.

    python tests/benchmarks/train_step_cost.py ratio --tiny            # CPU, seconds
    python tests/benchmarks/train_step_cost.py ratio                   # GPU, ~1B (llada_1b_{sft,stage3}.yaml)
    python tests/benchmarks/train_step_cost.py mfu                     # GPU, ~1B Stage-1 run (llada_1b_pretrain.yaml)
    python tests/benchmarks/train_step_cost.py zero2                   # 2 GPUs, DeepSpeed ZeRO-2 + single-process load

The ratio compares a Stage-3 *draft* step (rollout + edit passes + labelling + forward/backward of both
heads; the worst case, intermediate_ratio forced to 1 and the edit curriculum at its end) with a Stage-2
step of the same model and batch, and prints the mixed average at the config's intermediate_ratio.
GPU data and tokenizer come from GSM8K (experiments/train/prepare_gsm8k.py, run automatically).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "experiments" / "train"
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(cfg, steps: int, warmup: int) -> float:
    """Median seconds per optimiser step after ``warmup`` steps (a fresh model, no checkpoints)."""
    from core.train.engine import Trainer

    tr = Trainer(cfg)
    tr._prepare(None)
    times = []
    for i in range(warmup + steps):
        _sync()
        t0 = time.perf_counter()
        tr.train_step()
        tr.step += 1
        _sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    del tr
    return statistics.median(times)


def step_cost_ratio(sft_cfg, stage3_cfg, steps: int = 10, warmup: int = 3) -> dict:
    import dataclasses

    import torch

    s3 = stage3_cfg.stage3
    worst = dataclasses.replace(stage3_cfg, stage3=dataclasses.replace(s3, intermediate_ratio=1.0, curriculum_steps=1))
    t2 = time_steps(sft_cfg, steps, warmup)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    t3 = time_steps(worst, steps, warmup)
    r = s3.intermediate_ratio
    return {"stage2_step_s": t2, "stage3_draft_step_s": t3, "draft_over_stage2": t3 / t2,
            "mixed_over_stage2": (r * t3 + (1 - r) * t2) / t2, "intermediate_ratio": r,
            "rollout_passes": s3.rollout_passes, "edit_passes": s3.max_diffusion_steps}


def tiny_configs(root: Path, batch: int = 8, model_config: dict | None = None):
    sys.path.insert(0, str(REPO / "tests" / "core"))
    import _train_helpers as H

    from core.train.config import load_config

    ws = H.make_workspace(root, n_chat=32)
    extra = {"optim.micro_batch_size": batch, **({"model.config": model_config} if model_config else {})}
    over = lambda out: H.tiny_overrides(ws, "sft", root / out, **extra)  # noqa: E731
    return load_config(TRAIN / "tiny_sft.yaml", over("s2")), load_config(TRAIN / "tiny_stage3.yaml", over("s3"))


def gpu_workspace() -> None:
    sys.path.insert(0, str(TRAIN))
    from prepare_gsm8k import prepare

    prepare(REPO / "runs" / "gsm8k")


def cmd_ratio(a) -> None:
    from core.train.config import load_config

    if a.tiny:
        with tempfile.TemporaryDirectory() as d:
            s2, s3 = tiny_configs(Path(d), a.batch, json.loads(a.model_config) if a.model_config else None)
            res = step_cost_ratio(s2, s3, a.steps, a.warmup)
    else:
        gpu_workspace()
        quiet = {"engine.progress": False, "engine.tensorboard": False}
        res = step_cost_ratio(load_config(TRAIN / "llada_1b_sft.yaml", quiet),
                              load_config(TRAIN / "llada_1b_stage3.yaml", quiet), a.steps, a.warmup)
    print(json.dumps(res, indent=1))
    print(f"Stage-3 draft step / Stage-2 step = {res['draft_over_stage2']:.2f}x; mixed at intermediate_ratio "
          f"{res['intermediate_ratio']}: {res['mixed_over_stage2']:.2f}x (target <= 2x)")


def cmd_mfu(a) -> None:
    from core.train.config import load_config
    from core.train.engine import Trainer

    gpu_workspace()
    out = REPO / "runs" / "llada_1b" / "pretrain"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(TRAIN / "llada_1b_pretrain.yaml", {"optim.max_steps": a.steps, "engine.progress": False})
    tr = Trainer(cfg)
    tr.train()
    n_params = sum(p.numel() for p in tr.model.parameters())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][a.warmup:]
    tps = statistics.median(r["tokens_per_s"] for r in rows)
    mfu = 6 * n_params * tps / H100_BF16_PEAK
    print(f"params N = {n_params / 1e9:.3f} B; tokens/s (median of steps > {a.warmup}) = {tps:,.0f}")
    print(f"peak bf16 dense H100 = {H100_BF16_PEAK / 1e12:.0f} TFLOP/s; MFU = 6*N*tokens/s / peak = {mfu:.1%}")
    print(f"loss: first {rows[0]['loss']:.3f} -> last {rows[-1]['loss']:.3f}")


def cmd_zero2(a) -> None:
    import torch

    from core.model import LLaDAModel
    from core.tokenizer import load_tokenizer

    gpu_workspace()
    out = REPO / "runs" / "llada_1b" / "zero2"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TRAIN / "llada_1b_pretrain_zero2.yaml"
    launch = ["torchrun", "--standalone", f"--nproc_per_node={a.gpus}", "--module", "refinery", "train", str(cfg),
              "--no-progress"]
    subprocess.run(launch, cwd=REPO, check=True)
    subprocess.run(launch + ["--resume", "--max-steps", "25"], cwd=REPO, check=True)  # DeepSpeed resume path
    ckpt = out / "checkpoints" / "step-000020"
    for d in (ckpt, out):
        model = LLaDAModel.from_pretrained(str(d), local_files_only=True).cuda().eval()
        tok = load_tokenizer(d)
        ids = torch.tensor([tok.encode("Natalia sold clips")], device="cuda")
        with torch.no_grad():
            logits = model(ids).logits
        assert torch.isfinite(logits.float()).all()
        print(f"{d}: loads in one process, {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B params, "
              f"forward ok {tuple(logits.shape)}")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(f"metrics steps {steps[0]}..{steps[-1]} ({len(steps)} lines, expect 1..25)")


def main() -> None:
    p = argparse.ArgumentParser(description="training step cost / MFU / ZeRO-2 smoke")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("ratio")
    r.add_argument("--tiny", action="store_true", help="tiny CPU model instead of the ~1B GPU config")
    r.add_argument("--model-config", default=None, help="--tiny: LLaDAConfig JSON overriding the tiny shape")
    r.add_argument("--batch", type=int, default=8, help="--tiny: micro-batch size")
    r.add_argument("--steps", type=int, default=10)
    r.add_argument("--warmup", type=int, default=3)
    m = sub.add_parser("mfu")
    m.add_argument("--steps", type=int, default=40)
    m.add_argument("--warmup", type=int, default=10)
    z = sub.add_parser("zero2")
    z.add_argument("--gpus", type=int, default=2)
    a = p.parse_args()
    {"ratio": cmd_ratio, "mfu": cmd_mfu, "zero2": cmd_zero2}[a.cmd](a)


if __name__ == "__main__":
    main()
