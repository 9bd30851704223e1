"""Fused training kernels (core/fused.py): the switch, the CPU fallbacks (they must equal eager exactly), the
fused-head losses of Stages 1-3, and - on a CUDA machine with liger-kernel - the kernels against eager."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refinery.core.fused import KERNELS, kernel_set, linear_cross_entropy, liger_ops, uses_fused_ce
from refinery.core.model import LLaDAConfig, LLaDAModel
from refinery.core.train.config import ObjectiveSection, Stage3Section

TINY = dict(vocab_size=100, d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64, mask_token_id=99,
            eos_token_id=98, delete_token_id=97)
needs_liger_gpu = pytest.mark.skipif(not torch.cuda.is_available() or liger_ops() is None,
                                     reason="needs a CUDA device and liger-kernel (pip install -e '.[gpu]')")


def _pair(kernels: str, next_head: bool = True, device: str = "cpu"):
    """An eager model and a copy switched to ``kernels`` (same weights)."""
    torch.manual_seed(0)
    eager = LLaDAModel(LLaDAConfig(next_token_head=next_head, **TINY)).to(device)
    fused = copy.deepcopy(eager)
    fused.set_kernels(kernels)
    return eager, fused


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_unknown_kernels_name_fails_with_the_list():
    with pytest.raises(ValueError, match=r"kernels 'fast' unknown; available: \['compile', 'eager', 'liger'\]"):
        LLaDAConfig(kernels="fast", **TINY)
    with pytest.raises(ValueError, match="available"):
        kernel_set("nope")
    assert not KERNELS["eager"].fused_ce and KERNELS["liger"].fused_ce and KERNELS["compile"].compile_blocks


def test_kernels_are_not_saved_with_the_model(tmp_path):
    _, fused = _pair("liger")
    assert "kernels" not in fused.config.to_dict()
    fused.save_pretrained(tmp_path)
    loaded = LLaDAModel.from_pretrained(str(tmp_path))
    assert loaded.config.kernels == "eager" and not uses_fused_ce(loaded)


@pytest.mark.parametrize("kernels", ["liger", "compile"])
def test_cpu_fallback_forward_and_grads_equal_eager(kernels):
    eager, fused = _pair(kernels)
    ids = torch.randint(0, 97, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 9:] = False  # a padded row: the masked attention path too
    out_e, out_f = eager(ids, attention_mask=mask), fused(ids, attention_mask=mask)
    assert torch.equal(out_e.logits, out_f.logits) and torch.equal(out_e.next_logits, out_f.next_logits)
    (out_e.logits.sum() + out_e.next_logits.pow(2).mean()).backward()
    (out_f.logits.sum() + out_f.next_logits.pow(2).mean()).backward()
    ge, gf = _grads(eager), _grads(fused)
    assert ge.keys() == gf.keys() and all(torch.equal(ge[n], gf[n]) for n in ge)
    if kernels == "compile":  # only a CUDA machine builds compiled blocks; CPU tensors never take them
        assert all((b.compiled is not None) == torch.cuda.is_available() and b.compiled_shape is None
                   for b in fused.layers)


def test_heads_can_be_skipped():
    _, fused = _pair("liger")
    out = fused(torch.randint(0, 97, (2, 7)), compute_logits=False)
    assert out.logits is None and out.next_logits is None and out.hidden_states.shape == (2, 7, 32)


def test_linear_cross_entropy_fallback_matches_the_logits_formula():
    torch.manual_seed(1)
    h = torch.randn(9, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    tgt = torch.randint(0, 50, (9,))
    coef = torch.rand(9)
    ce = linear_cross_entropy(h, w, tgt, fused=True)
    ref = F.cross_entropy(h @ w.T, tgt, reduction="none")
    assert ce.dtype == torch.float32 and torch.allclose(ce, ref, atol=1e-6)
    gh, gw = torch.autograd.grad((ce * coef).sum(), (h, w))
    rh, rw = torch.autograd.grad((ref * coef).sum(), (h, w))
    assert torch.allclose(gh, rh, atol=1e-6) and torch.allclose(gw, rw, atol=1e-6)
    assert linear_cross_entropy(h[:0], w, tgt[:0], fused=True).shape == (0,)


@pytest.mark.parametrize("normalize", ["tokens", "masked"])
def test_stage1_fused_heads_loss_equals_eager(normalize):
    from refinery.core.train.objectives import masked_diffusion_loss

    eager, fused = _pair("liger")
    x0 = torch.randint(0, 97, (4, 16))
    eligible = torch.rand(4, 16) < 0.8
    obj = ObjectiveSection(normalize=normalize, next_head_weight=0.5)
    outs = []
    for m in (eager, fused):
        out = masked_diffusion_loss(m, x0, eligible, None, obj, 99, torch.Generator().manual_seed(3))
        out.loss.backward()
        outs.append((out, _grads(m)))
    (oe, ge), (of, gf) = outs
    assert oe.loss.item() > 0 and abs(oe.loss.item() - of.loss.item()) < 1e-5 * oe.loss.item()
    assert oe.metrics.keys() == of.metrics.keys()
    assert all(torch.allclose(ge[n], gf[n], atol=1e-6, rtol=1e-4) for n in ge)
    assert gf["next_token_head.weight"].abs().sum() > 0  # the next-token head learns through the fused path


def test_stage3_draft_loss_fused_heads_equals_eager():
    from refinery.core.train.stage3 import Stage3Objective

    eager, fused = _pair("compile")
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, 90, 5), rng.integers(2, 90, 3)]
    truths = [rng.integers(2, 90, 8), rng.integers(2, 90, 6)]
    drafts = [truths[0][[0, 1, 3, 3, 4, 5, 6, 7]], np.r_[truths[1][:4], 7, truths[1][4:]]]
    obj = Stage3Objective.__new__(Stage3Objective)  # draft_loss reads only the special ids and the objective
    obj.special = {"pad_token_id": 98, "eos_token_id": 98, "delete_token_id": 97}
    obj.cfg = types.SimpleNamespace(objective=ObjectiveSection(), stage3=Stage3Section())
    res = []
    for m in (eager, fused):
        out = obj.draft_loss(m, prompts, drafts, truths)
        out.loss.backward()
        res.append((out, _grads(m)))
    (oe, ge), (of, gf) = res
    for key in ("loss_cur", "loss_next"):
        assert abs(oe.metrics[key] - of.metrics[key]) < 1e-5 * oe.metrics[key]
    assert all(torch.allclose(ge[n], gf[n], atol=1e-6, rtol=1e-4) for n in ge)


def test_training_keeps_the_yaml_kernels_across_a_resume(tmp_path):
    """A checkpoint loads eager (kernels are not saved); resuming applies the run's model.config.kernels again."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _train_helpers as H

    from refinery.core.train.config import load_config
    from refinery.core.train.engine import Trainer, build_optimizer

    ws = H.make_workspace(tmp_path)
    over = H.tiny_overrides(ws, "text", tmp_path / "s1", **{"optim.max_steps": 2, "engine.save_every": 2,
                                                           "model.config.kernels": "liger"})
    tr = Trainer(load_config(H.TINY / "tiny_pretrain.yaml", over))
    tr.train()
    assert tr.model.config.kernels == "liger" and H.read_metrics(tmp_path / "s1")[-1]["step"] == 2
    assert not build_optimizer(tr.model, tr.cfg).defaults["fused"]  # fused AdamW only for CUDA parameters
    tr2 = Trainer(load_config(H.TINY / "tiny_pretrain.yaml", {**over, "optim.max_steps": 3}))
    tr2.train(resume=True)
    assert tr2.step == 3 and tr2.model.config.kernels == "liger"
    bad = H.tiny_overrides(ws, "text", tmp_path / "s3", **{"model.config.kernels": "turbo"})
    with pytest.raises(ValueError, match="model.config: kernels 'turbo' unknown"):
        Trainer(load_config(H.TINY / "tiny_pretrain.yaml", bad))._prepare(None)


# ------------------------------------------------------------------------------------------------ GPU only
@needs_liger_gpu
def test_liger_kernels_match_eager_on_gpu_in_bf16():
    torch.manual_seed(0)
    eager, fused = _pair("liger", device="cuda")
    ids = torch.randint(0, 97, (2, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        le, lf = eager(ids).logits.float(), fused(ids).logits.float()
    assert (lf - le).norm() / le.norm() < 2e-2  # bf16 operands: relative error 1e-3..1e-2
    h = torch.randn(300, 32, device="cuda", requires_grad=True)
    w = torch.randn(100, 32, device="cuda", requires_grad=True)
    tgt = torch.randint(0, 100, (300,), device="cuda")
    ce = linear_cross_entropy(h, w, tgt, fused=True)
    ref = F.cross_entropy(h @ w.T, tgt, reduction="none")
    assert (ce - ref).norm() / ref.norm() < 1e-3
    coef = torch.rand(300, device="cuda")
    gh = torch.autograd.grad((ce * coef).sum(), h)[0]
    rh = torch.autograd.grad((ref * coef).sum(), h)[0]
    assert (gh - rh).norm() / rh.norm() < 1e-3  # per-row weights reach the gradient (Liger's deferred backward)
