"""Fused training kernels on the GPU: numerics against eager, the top kernels by GPU time, loss curves.

    python tests/benchmarks/train_kernels.py numerics --kernels liger,compile        # 1.06B + tiny shapes
    python tests/benchmarks/train_kernels.py profile --kernels compile --steps 3    # top kernels of a Stage-1 step
    python tests/benchmarks/train_kernels.py attention                              # SDPA back-ends, 1.06B shape
    python tests/benchmarks/train_kernels.py curve A.json B.json                     # two `mfu --json` runs

numerics: one bf16-autocast Stage-1 loss (and, with ``--stage3``, a both-heads draft loss) with backward, from
the same weights and the same masking, for eager and for each kernel set. The reference is the same loss in
float32 (no autocast): eager bf16's own distance from it is the noise floor the fused paths are held to
(fused-vs-eager gradient difference at most 2x eager's bf16-vs-fp32 difference, loss within 1e-2 relative).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPE_1B = {"d_model": 2048, "n_layers": 20, "n_heads": 16, "mlp_hidden_size": 5632, "max_sequence_length": 4096,
            "rope_theta": 500000.0}
SHAPE_TINY = {"d_model": 32, "n_layers": 2, "n_heads": 4, "mlp_hidden_size": 64}


def _loss_and_grads(model, x0, autocast: bool, seed: int = 0):
    """Loss and {name: grad} of one Stage-1 loss (both heads when the model has the next-token head)."""
    import torch

    from refinery.core.train.config import ObjectiveSection
    from refinery.core.train.objectives import masked_diffusion_loss

    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(seed)
    eligible = torch.ones_like(x0, dtype=torch.bool)
    dev = next(model.parameters()).device.type
    ctx = torch.autocast(dev, dtype=torch.bfloat16) if autocast else torch.autocast(dev, enabled=False)
    with ctx:
        out = masked_diffusion_loss(model, x0, eligible, None, ObjectiveSection(), model.config.mask_token_id, gen)
    out.loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(out.loss), out.metrics, grads


def _draft_loss_and_grads(model, draft_batch, autocast: bool):
    """Stage 3's both-heads draft loss (Stage3Objective.draft_loss) on fixed prompts/drafts/truths, with grads."""
    import types

    import torch

    from refinery.core.train.config import ObjectiveSection
    from refinery.core.train.stage3 import Stage3Objective

    c = model.config
    obj = Stage3Objective.__new__(Stage3Objective)  # draft_loss reads only the special ids and the objective
    obj.special = {"pad_token_id": c.pad_token_id, "eos_token_id": c.eos_token_id, "delete_token_id": c.delete_token_id}
    obj.cfg = types.SimpleNamespace(objective=ObjectiveSection())
    model.zero_grad(set_to_none=True)
    dev = next(model.parameters()).device.type
    ctx = torch.autocast(dev, dtype=torch.bfloat16) if autocast else torch.autocast(dev, enabled=False)
    with ctx:
        out = obj.draft_loss(model, *draft_batch)
    out.loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(out.loss), out.metrics, grads


def _draft_batch(vocab: int, batch: int, seq: int, seed: int = 0):
    """Random prompts, drafts and truths (drafts = truths with ~20% of tokens replaced, some dropped)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    prompts, drafts, truths = [], [], []
    for _ in range(batch):
        P, n = int(rng.integers(seq // 8, seq // 4)), int(rng.integers(seq // 4, seq // 2))
        truth = rng.integers(0, vocab - 3, n)
        draft = np.where(rng.random(n) < 0.2, rng.integers(0, vocab - 3, n), truth)[rng.random(n) > 0.05]
        prompts.append(rng.integers(0, vocab - 3, P))
        drafts.append(draft)
        truths.append(truth)
    return prompts, drafts, truths


def _grad_diff(a: dict, b: dict) -> tuple[float, float, str]:
    """Global ||a - b|| / ||b|| over all parameters, and the worst single parameter's (with its name)."""
    import torch

    num = sum(float((a[n] - b[n]).pow(2).sum()) for n in b)
    den = sum(float(b[n].pow(2).sum()) for n in b)
    worst = max(((float((a[n] - b[n]).norm() / b[n].norm().clamp(min=1e-30)), n) for n in b))
    return (num / max(den, 1e-30)) ** 0.5, worst[0], worst[1]


def check_shape(name: str, shape: dict, vocab: int, batch: int, seq: int, kernels: list[str], heads2: bool) -> list:
    import torch

    from refinery.core.model import LLaDAConfig, LLaDAModel

    torch.manual_seed(0)
    cfg = LLaDAConfig(vocab_size=vocab, mask_token_id=vocab - 1, eos_token_id=vocab - 2, delete_token_id=vocab - 3,
                      next_token_head=heads2, **shape)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of this script (fallback paths)
    ref = LLaDAModel(cfg).to(device).train()
    if heads2:  # Stage 3: the draft loss of both heads
        drafts = _draft_batch(vocab, batch, seq)
        run = lambda m, ac: _draft_loss_and_grads(m, drafts, ac)  # noqa: E731
    else:
        x0 = torch.randint(0, vocab - 3, (batch, seq), device=device)
        run = lambda m, ac: _loss_and_grads(m, x0, ac)  # noqa: E731
    name = f"{name} stage3 draft" if heads2 else f"{name} stage1"
    loss32, _, g32 = run(ref, False)
    loss_e, _, g_e = run(ref, True)
    floor, floor_worst, _ = _grad_diff(g_e, g32)
    rows = [{"shape": name, "kernels": "eager", "loss": loss_e, "loss_fp32": loss32, "grad_rel_vs_fp32": floor,
             "worst_param_vs_fp32": floor_worst}]
    for k in kernels:
        model = copy.deepcopy(ref)
        model.set_kernels(k)
        loss_f, _, g_f = run(model, True)
        rel, worst, worst_name = _grad_diff(g_f, g_e)
        rel32, _, _ = _grad_diff(g_f, g32)
        ok = abs(loss_f - loss_e) <= 1e-2 * abs(loss_e) and rel <= max(2 * floor, 1e-3)
        rows.append({"shape": name, "kernels": k, "loss": loss_f,
                     "loss_rel_vs_eager": abs(loss_f - loss_e) / abs(loss_e),
                     "grad_rel_vs_eager": rel, "worst_param_vs_eager": worst, "worst_param": worst_name,
                     "grad_rel_vs_fp32": rel32, "ok": ok})
        del model
    del ref
    torch.cuda.empty_cache()
    return rows


def cmd_numerics(a) -> None:
    kernels = [k for k in a.kernels.split(",") if k]
    rows = []
    for name, shape, vocab, batch, seq in (("tiny", SHAPE_TINY, 100, 4, 64), ("1.06B", SHAPE_1B, 8192, a.batch, a.seq)):
        for heads2 in (False, True) if a.stage3 else (False,):
            rows += check_shape(name, shape, vocab, batch, seq, kernels, heads2)
    for r in rows:
        print(json.dumps(r))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if r.get("ok") is False]
    print(f"numerics: {len(rows) - len(bad)}/{len(rows)} within tolerance" + (f"; FAILED: {bad}" if bad else ""))


def cmd_profile(a) -> None:
    """Top CUDA kernels over ``--steps`` Stage-1 steps of the 1.06B config (after warm-up)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from refinery.core.train.config import load_config
    from refinery.core.train.engine import Trainer
    from train_step_cost import TRAIN, gpu_workspace

    gpu_workspace()
    over = {"engine.progress": False, "engine.tensorboard": False, "model.config.kernels": a.kernels,
            "data.random_length_prob": 0.0, "engine.out_dir": "runs/llada_1b/profile"}
    tr = Trainer(load_config(TRAIN / "llada_1b_pretrain.yaml", over))
    tr._prepare(None)
    for _ in range(a.warmup):
        tr.train_step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(a.steps):
            tr.train_step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    matmul_names = ("gemm", "nvjet", "cutlass", "sm90_xmma")
    gemm = sum(e.self_device_time_total for e in events if any(s in e.key.lower() for s in matmul_names))
    print(f"kernels {a.kernels}: GPU time {total / 1e3 / a.steps:.1f} ms per step; "
          f"matrix multiplies {gemm / total:.1%}")
    for e in events[: a.top]:
        print(f"{e.self_device_time_total / total:6.1%} {e.self_device_time_total / 1e3 / a.steps:8.2f} ms/step  "
              f"x{e.count // a.steps:<4d} {e.key[:110]}")
    if a.trace:
        prof.export_chrome_trace(a.trace)


def cmd_attention(a) -> None:
    """Forward + backward of bidirectional SDPA at the 1.06B training shape, per back-end (median ms, TFLOP/s)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    B, H, L, D = a.batch, 16, a.seq, 128
    q, k, v = (torch.randn(B, L, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
               for _ in range(3))
    dy = torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16)
    flops = 4 * B * H * L * L * D * 3.5  # forward QK^T + AV, backward 2.5x (recomputed scores)
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def step():
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, k, v).backward(dy)
        try:
            ms = do_bench(step, warmup=50, rep=300, return_mode="median")
        except RuntimeError as e:
            print(f"{name}: not available ({str(e).splitlines()[0][:100]})")
            continue
        print(f"{name}: fwd+bwd {ms:.3f} ms per layer ({flops / ms / 1e9:.0f} TFLOP/s); x20 layers {20 * ms:.1f} ms")


def cmd_curve(a) -> None:
    """Compare the loss curves of two ``train_step_cost.py mfu --json`` runs step by step."""
    runs = [json.loads(Path(p).read_text()) for p in (a.first, a.second)]
    losses = [[r["loss"] for r in run["metrics"]] for run in runs]
    n = min(len(x) for x in losses)
    diffs = [abs(x - y) for x, y in zip(losses[0][:n], losses[1][:n])]
    w = a.window
    smooth = [[statistics.mean(x[max(0, i - w + 1):i + 1]) for i in range(n)] for x in losses]
    sdiff = [abs(x - y) for x, y in zip(*smooth)]
    noise = statistics.pstdev([x - y for x, y in zip(losses[0][1:n], losses[0][:n - 1])]) if n > 2 else 0.0
    print(f"{n} steps; {runs[0].get('kernels')} vs {runs[1].get('kernels')}: final loss {losses[0][n - 1]:.4f} vs "
          f"{losses[1][n - 1]:.4f}; mean |diff| {statistics.mean(diffs):.4f}, max {max(diffs):.4f}; "
          f"{w}-step means: max |diff| {max(sdiff):.4f} over the last half {max(sdiff[n // 2:]):.4f}; "
          f"step-to-step noise of the first run (std) {noise:.4f}")
    for i in list(range(0, n, max(1, n // 10))) + [n - 1]:
        print(f"step {i + 1:4d}: {losses[0][i]:.4f} {losses[1][i]:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description="fused training kernels: numerics, profile, loss curves")
    sub = p.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("numerics")
    n.add_argument("--kernels", default="liger,compile")
    n.add_argument("--batch", type=int, default=4)
    n.add_argument("--seq", type=int, default=2048)
    n.add_argument("--stage3", action="store_true", help="also Stage 3's draft loss (both heads) on each shape")
    n.add_argument("--json", default=None)
    f = sub.add_parser("profile")
    f.add_argument("--kernels", default="compile")
    f.add_argument("--warmup", type=int, default=4)
    f.add_argument("--steps", type=int, default=3)
    f.add_argument("--top", type=int, default=15)
    f.add_argument("--trace", default=None, help="also write a Chrome trace here")
    t = sub.add_parser("attention")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--seq", type=int, default=2048)
    c = sub.add_parser("curve")
    c.add_argument("first")
    c.add_argument("second")
    c.add_argument("--window", type=int, default=10)
    a = p.parse_args()
    import os

    os.chdir(REPO)
    {"numerics": cmd_numerics, "profile": cmd_profile, "attention": cmd_attention, "curve": cmd_curve}[a.cmd](a)


if __name__ == "__main__":
    main()
