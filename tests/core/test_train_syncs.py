"""The training step without host syncs (issue #26): the objectives pick the rows to score from masks known on
the host and hand back device scalars, the trainer reads all of them once per optimiser step, and every number
is what the code before the change gave.

The references below are the pre-change formulas, written out inline: boolean-mask selection (``x[mask]``,
``mask.nonzero()``), an ``.item()`` per metric, ``float(v) / accum`` summed in Python floats (R2FT's softmax and
final reduction, untouched by the change, are the library's). Comparisons are exact (``torch.equal`` / ``==``):
the new code selects the same rows in the same order and runs the same arithmetic, so on the CPU not one bit may
differ, in the losses, the metrics or the gradients.

What a CPU run can show about syncs: no sync-prone operation (``.item()``, ``bool()``, ``nonzero``, boolean
indexing, ...) touches a tensor of the autograd graph, where the model's outputs live, and the trainer itself
reads the device once per step. The GPU count is ``train_step_cost.py mfu --sync-debug``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from refinery.core.train.config import load_config
from refinery.core.train.data import to_device
from refinery.core.train.r2ft import reduce_pair_logprobs, vocab_logprobs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_helpers as H  # noqa: E402
from _train_helpers import EOS, MASK, SPECIAL, cfg_for  # noqa: E402
IGNORE = -100


model = pytest.fixture(scope="module")(H.objective_model)


def chat_batch(seed: int, n_rows: int = 4, **kw):
    return H.chat_batch(seed, n_rows, **kw)


def grads_of(model, loss: torch.Tensor) -> dict:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(new, ref_loss, ref_metrics: dict, ref_tokens: int, model, ref_grads: dict):
    """new: a LossOutput; metrics compared as the trainer logs them (float of each value)."""
    assert torch.equal(new.loss.detach(), ref_loss.detach())
    assert {k: float(v) for k, v in new.metrics.items()} == ref_metrics
    assert new.tokens == ref_tokens
    got = grads_of(model, new.loss)
    assert got.keys() == ref_grads.keys() and all(torch.equal(got[n], ref_grads[n]) for n in got)


# ------------------------------------------------------------------------------- the old formulas, inline
def old_masked_diffusion_loss(model, x0, eligible, attention_mask, obj, gen):
    B, L = eligible.shape
    t = obj.min_t + (obj.max_t - obj.min_t) * torch.rand(1 if obj.t_sampling == "micro_batch" else B, generator=gen)
    t = t.expand(B)
    masked = (torch.rand(B, L, generator=gen) < t[:, None]) & eligible
    xt = torch.where(masked, torch.full_like(x0, MASK), x0)
    use_next = obj.next_head_weight > 0
    out = model(xt, attention_mask=attention_mask, compute_next=use_next)
    weight, denom = (1.0 / t)[:, None].expand_as(masked), eligible.sum(1)

    def ce(logits, targets, where):
        c = F.cross_entropy(logits[where].float(), targets[where], reduction="none") * weight[where]
        if obj.normalize == "masked":
            return c.sum() / where.sum().clamp(min=1)
        rows = torch.zeros(B, dtype=c.dtype).index_add_(0, where.nonzero()[:, 0], c)
        return (rows / denom.clamp(min=1)).mean()

    loss = cur = ce(out.logits, x0, masked)
    metrics = {"loss_cur": cur.item(), "mask_frac": (masked.sum() / eligible.sum().clamp(min=1)).item()}
    if use_next:
        nw, nt = torch.zeros_like(masked), torch.zeros_like(x0)
        nw[:, :-1], nt[:, :-1] = masked[:, 1:], x0[:, 1:]
        nxt = ce(out.next_logits, nt, nw)
        loss = loss + obj.next_head_weight * nxt
        metrics["loss_next"] = nxt.item()
    return loss, metrics, int(eligible.numel() if attention_mask is None else attention_mask.sum())


def old_pair_logprobs(logits, pair, reduction, mask_id):
    B = logits.shape[0]
    scored = pair.win | pair.lose
    logp = vocab_logprobs(logits[scored], mask_id)
    rows = scored.nonzero()[:, 0]
    out = []
    for where, target in ((pair.win, pair.winner), (pair.lose, pair.loser)):
        keep = where[scored]
        tok = logp[keep].gather(1, target[where][:, None]).squeeze(1)
        total = torch.zeros(B, dtype=tok.dtype).index_add_(0, rows[keep], tok)
        out.append((total, torch.bincount(rows[keep], minlength=B).to(tok.dtype)))
    # The sync work changed how the positions are selected and summed, not the softmax or the reduction, so both
    # sides share the library's; test_train_recipes.py checks "mean" and "length" against hand-written formulas.
    return reduce_pair_logprobs(*out, pair.win_len, reduction)


# ------------------------------------------------------------------------------- numerics: Stage 1 and 2
@pytest.mark.parametrize("normalize,t_sampling,next_w,crop", [
    ("tokens", "sequence", 0.5, 0.0), ("masked", "micro_batch", 1.0, 0.0), ("tokens", "sequence", 0.0, 1.0)])
def test_stage1_loss_metrics_and_grads_equal_the_old_formula(model, normalize, t_sampling, next_w, crop):
    from refinery.core.train.objectives import PretrainObjective

    cfg = cfg_for("pretrain", objective={"normalize": normalize, "t_sampling": t_sampling, "next_head_weight": next_w},
                  data={"train_files": ["x.jsonl"], "random_length_prob": crop})
    x0 = torch.randint(3, 98, (4, 24), generator=torch.Generator().manual_seed(1))
    ref_gen = torch.Generator().manual_seed(5)
    c = torch.rand(2, generator=ref_gen)  # the old crop, inline
    ref_x0 = x0[:, : 1 + int(c[1].item() * x0.shape[1])] if c[0].item() < crop else x0
    ref = old_masked_diffusion_loss(model, ref_x0, torch.ones_like(ref_x0, dtype=torch.bool), None, cfg.objective,
                                    ref_gen)
    ref_grads = grads_of(model, ref[0])
    new = PretrainObjective(cfg, SPECIAL).loss(model, x0, torch.Generator().manual_seed(5), 0)
    assert set(new.metrics) == {"loss_cur", "mask_frac"} | ({"loss_next"} if next_w else set())
    assert_same(new, *ref, model, ref_grads)


@pytest.mark.parametrize("normalize,mask_first", [("tokens", True), ("masked", False)])
def test_stage2_loss_metrics_and_grads_equal_the_old_formula(model, normalize, mask_first):
    from refinery.core.train.objectives import SFTObjective, chat_eligible

    cfg = cfg_for("sft", objective={"normalize": normalize, "mask_first_response_token": mask_first})
    batch = chat_batch(3)
    ref = old_masked_diffusion_loss(model, batch.input_ids, chat_eligible(batch, mask_first), batch.attention_mask,
                                    cfg.objective, torch.Generator().manual_seed(7))
    ref_grads = grads_of(model, ref[0])
    new = SFTObjective(cfg, SPECIAL).loss(model, batch, torch.Generator().manual_seed(7), 0)
    assert isinstance(new.metrics["loss_cur"], torch.Tensor)  # left on the device for the trainer to read
    assert_same(new, *ref, model, ref_grads)


def test_weighted_ce_takes_a_device_mask_or_a_host_selection_alike():
    from refinery.core.train.objectives import Selection, weighted_ce

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 5, 11, generator=g), torch.randint(0, 11, (3, 5), generator=g)
    where = torch.rand(3, 5, generator=g) < 0.5
    weight, denom = torch.rand(3, 5, generator=g) + 0.5, torch.tensor([5, 4, 3])
    sel = Selection.of(where, "cpu")
    assert torch.equal(sel.flat, where.flatten().nonzero().squeeze(1)) and torch.equal(sel.rows, where.nonzero()[:, 0])
    assert torch.equal(sel.take(logits), logits[where]) and int(sel.count) == max(1, int(where.sum()))
    for norm in ("tokens", "masked"):
        assert torch.equal(weighted_ce(logits, targets, where, weight, denom, norm),
                           weighted_ce(logits, targets, sel, weight, denom, norm))
    empty = Selection.of(torch.zeros(3, 5, dtype=torch.bool), "cpu")
    assert empty.flat.numel() == 0 and int(empty.count) == 1  # an empty mask divides by 1, as clamp(min=1) did


# ------------------------------------------------------------------------------- numerics: Stage 3 and R2FT
@pytest.mark.parametrize("t", [None, 0.25])
def test_stage3_draft_loss_equals_the_old_formula(model, t):
    from refinery.core.train.stage3 import Stage3Objective, draft_targets

    cfg = cfg_for("stage3", objective={"next_head_weight": 0.7})
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 90, 5), rng.integers(3, 90, 3), rng.integers(3, 90, 4)]
    truths = [rng.integers(3, 90, 8), rng.integers(3, 90, 6), rng.integers(3, 90, 2)]
    drafts = [truths[0][[0, 1, 3, 3, 4, 5, 6, 7]], np.r_[truths[1][:4], 7, truths[1][4:]], truths[2][:1]]
    ids, attn, cur_t, next_t = draft_targets(prompts, drafts, truths, SPECIAL, cfg.stage3.ignore_deleted_gaps,
                                             cfg.stage3.labels)
    out = model(ids, attention_mask=attn, compute_next=True)

    def mean_ce(logits, targets):  # the old _mean_ce
        where = targets != IGNORE
        return F.cross_entropy(logits[where].float(), targets[where], reduction="sum") / where.sum().clamp(min=1)

    cur, nxt = mean_ce(out.logits, cur_t), mean_ce(out.next_logits, next_t)
    loss = cur + 0.7 * nxt
    if t is not None:
        loss = loss / float(torch.tensor(t))
    changed = ((cur_t != IGNORE) & (cur_t != ids)).sum() / (cur_t != IGNORE).sum().clamp(min=1)
    ref_metrics = {"loss_cur": cur.item(), "loss_next": nxt.item(), "draft_step": 1.0,
                   "draft_edit_frac": changed.item()}
    ref_grads = grads_of(model, loss)
    new = Stage3Objective(cfg, SPECIAL).draft_loss(model, prompts, drafts, truths,
                                                   None if t is None else torch.tensor(t))
    assert 0 < ref_metrics["draft_edit_frac"] < 1  # the drafts differ from the truths somewhere, not everywhere
    assert_same(new, loss, ref_metrics, int(attn.sum()), model, ref_grads)


@pytest.mark.parametrize("r2ft", [
    {}, {"lp_reduction": "sum", "batch_reduction": "sum", "ban_mask_logit": True},
    {"rejected": "phrase_span", "lp_reduction": "length", "repeat_ns": [1, 2]}])
def test_r2ft_loss_and_metrics_equal_the_old_formula(model, r2ft):
    from refinery.core.train.r2ft import R2FTObjective, phrase_span_pair, suffix_tile_pair

    cfg = cfg_for("r2ft", r2ft={"beta_w": 1.0, "beta_l": 0.5, "gamma": 0.1, "beta_a": 0.1, **r2ft})
    r = cfg.r2ft
    batch = chat_batch(4, prompt_min=15)
    gen = torch.Generator().manual_seed(9)
    pair = phrase_span_pair(batch, r, MASK, EOS, gen) if r.rejected == "phrase_span" \
        else suffix_tile_pair(batch, r, MASK, gen)
    out = model(pair.xt, attention_mask=pair.attention, compute_next=False)
    lp_w, lp_l = old_pair_logprobs(out.logits, pair, r.lp_reduction, MASK if r.ban_mask_logit else -1)
    pref = -F.logsigmoid(r.beta_w * lp_w - r.beta_l * lp_l - r.gamma)
    rows = pref - r.beta_a * lp_w
    loss = rows.sum() if r.batch_reduction == "sum" else rows.mean()
    ref_metrics = {"lp_w": lp_w.mean().item(), "lp_l": lp_l.mean().item(), "loss_pref": pref.mean().item(),
                   "suffix_tokens": float(pair.win.sum())}
    ref_grads = grads_of(model, loss)
    new = R2FTObjective(cfg, SPECIAL).loss(model, batch, torch.Generator().manual_seed(9), 0)
    assert_same(new, loss, ref_metrics, int(pair.attention.sum()), model, ref_grads)


# ------------------------------------------------------------------------------- the trainer
@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return H.make_workspace(tmp_path_factory.mktemp("ws"))


def trainer_for(ws, tmp_path, stage: str, data: str, **over):
    from refinery.core.train.engine import Trainer

    cfg = load_config(H.TINY / f"tiny_{stage}.yaml", H.tiny_overrides(ws, data, tmp_path / stage,
                                                                      **{"engine.save_every": 0, **over}))
    tr = Trainer(cfg)
    tr._prepare(None)
    return tr


class Recording:
    """Wraps an objective and reads each micro-batch's values the old way (``.item()``, ``float``)."""

    def __init__(self, inner):
        self.inner, self.kind, self.seen = inner, inner.kind, []

    def loss(self, *args):
        out = self.inner.loss(*args)
        self.seen.append(({"loss": out.loss.item(), **{k: float(v) for k, v in out.metrics.items()}}, out.tokens))
        return out


@pytest.mark.parametrize("stage,data", [("pretrain", "text"), ("stage3", "sft")])
def test_trainer_logs_what_the_old_per_micro_batch_reads_gave(ws, tmp_path, monkeypatch, stage, data):
    """grad_accum 3: each logged value is sum(float(v) / 3) over the micro-batches in order, the gradient norm
    float(clip_grad_norm_(...)), bit for bit; every value is a plain number that json writes."""
    tr = trainer_for(ws, tmp_path, stage, data, **{"optim.grad_accum": 3})
    tr.objective = Recording(tr.objective)
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norms.append(clip(*a, **k)) or norms[-1])
    for _ in range(3):
        tr.objective.seen.clear()
        metrics = tr.train_step()
        tr.step += 1
        expected: dict = {}
        for values, _ in tr.objective.seen:  # the old accumulation, in Python floats
            for k, v in values.items():
                expected[k] = expected.get(k, 0.0) + float(v) / 3
        expected["grad_norm"] = float(norms[-1])
        expected["tokens"] = sum(n for _, n in tr.objective.seen)
        assert len(tr.objective.seen) == 3 and metrics == expected
        assert all(type(v) in (float, int) for v in metrics.values()) and json.loads(json.dumps(metrics)) == metrics


SYNC_OPS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
            torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.numpy,
            torch.masked_select, torch.Tensor.masked_select, torch.bincount, torch.Tensor.bincount, torch.unique,
            torch.Tensor.unique, torch.Tensor.cpu}


class SyncProbe(TorchFunctionMode):
    """Records each call that waits on the device when run on a GPU: a scalar read, a data-dependent output
    size, boolean-mask indexing. Each record: (op name, whether the tensor belongs to the autograd graph,
    the repository file and function that called it)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bool_index = func is torch.Tensor.__getitem__ and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if isinstance(args[1], tuple) else (args[1],)))
        if (func in SYNC_OPS or bool_index) and args and isinstance(args[0], torch.Tensor):
            t = args[0]
            self.calls.append((getattr(func, "__name__", str(func)), t.requires_grad or t.grad_fn is not None,
                               caller()))
        return func(*args, **kwargs)


def caller() -> str:
    """Who made the call: 'core/train/x.py:function' for repository code, 'torch:...' for PyTorch's own Python (an
    optimiser reading its CPU step count), skipping torch's tensor-method wrappers."""
    f = sys._getframe(2)
    while f is not None and Path(f.f_code.co_filename).name in ("_tensor.py", "overrides.py"):
        f = f.f_back
    if f is None:
        return ""
    path = Path(f.f_code.co_filename)
    if H.REPO in path.parents:
        return f"{path.relative_to(H.REPO)}:{f.f_code.co_name}"
    return f"torch:{path.name}:{f.f_code.co_name}"


def test_sync_probe_sees_the_old_reads(model):
    """The probe can fail: the old pattern (a loss read, a boolean-mask selection of model outputs) shows up."""
    x = torch.randint(3, 98, (2, 6))
    probe = SyncProbe()
    with probe:
        logits = model(x).logits
        logits[x > 50].sum().item()
    assert [(name, graph) for name, graph, _ in probe.calls] == [("__getitem__", True), ("item", True)]


@pytest.mark.parametrize("stage,data,over", [
    ("pretrain", "text", {"data.random_length_prob": 0.5}), ("sft", "sft", {}),
    ("stage3", "sft", {"stage3.intermediate_ratio": 1.0}), ("stage3", "sft", {"stage3.intermediate_ratio": 0.0}),
    ("r2ft", "sft", {}), ("r2ft", "sft", {"r2ft.rejected": "phrase_span"})])
def test_train_step_reads_nothing_of_the_graph_and_the_device_once(ws, tmp_path, stage, data, over):
    """No sync-prone call on a tensor of the autograd graph (the model's outputs, the losses), and the trainer's
    own reads are the single batched one in read_floats. Host-side draws (crops, rollout choices) and the
    Stage-3 rollout (no_grad, its decode loop reads the device by design) are not in the graph."""
    tr = trainer_for(ws, tmp_path, stage, data, **{"optim.grad_accum": 2, **over})
    tr.train_step()  # first step outside the probe: lazy initialisation is not the step's cost
    for _ in range(2):
        probe = SyncProbe()
        with probe:
            tr.train_step()
        tr.step += 1
        assert [c for c in probe.calls if c[1]] == []
        engine = [c for c in probe.calls if c[2].startswith("core/train/engine.py")]
        assert engine == [("tolist", False, "core/train/engine.py:read_floats")]


# ------------------------------------------------------------------------------- copies and the GPU counter
def test_host_copies_stay_put_on_the_cpu():
    batch = chat_batch(1)
    assert batch.to("cpu") is batch and batch.on_host() is batch and batch.host is None
    t = torch.arange(4)
    assert to_device(t, "cpu") is t


def test_count_host_syncs_counts_the_warnings_of_each_step_by_line(monkeypatch):
    """CUDA's sync debug mode warns once per synchronising call; the counter tallies them per step and by the
    repository line that made them (here a fake trainer in this file; the GPU itself is faked)."""
    sys.path.insert(0, str(H.REPO / "tests" / "benchmarks"))
    import train_step_cost as T

    modes = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    class FakeTrainer:
        step = 0

        def train_step(self):
            for _ in range(self.step + 1):
                fake_sync()
            warnings.warn("an unrelated warning")

    with warnings.catch_warnings(record=True) as other:
        warnings.simplefilter("always")
        res = T.count_host_syncs(FakeTrainer(), 3)
    assert res["per_step"] == [1, 2, 3] and modes == ["warn", 0] * 3
    (site, n), = res["by_site"].items()
    assert n == 6 and site.startswith("tests/core/test_train_syncs.py:") and "warnings.warn" in site
    assert [str(w.message) for w in other] == ["an unrelated warning"] * 3  # passed through, not counted
    assert T.sync_report("step", None) == ["step: host syncs not counted (CUDA's sync debug mode needs a GPU)"]


def fake_sync():
    warnings.warn("called a synchronizing CUDA operation")


def test_mfu_sync_debug_on_the_cpu_says_it_counted_nothing(ws, tmp_path, monkeypatch, capsys):
    """The flag on a CPU dry run: the measurement is unchanged and the report says the count needs a GPU."""
    import argparse

    sys.path.insert(0, str(H.REPO / "tests" / "benchmarks"))
    import train_step_cost as T

    monkeypatch.setattr(T, "gpu_workspace", lambda: None)
    sets = [f"tokenizer={ws['tokenizer']}", f"data.train_files=[{ws['text']}]", f"engine.out_dir={tmp_path / 'out'}",
            "data.seq_len=16", "optim.micro_batch_size=2", "optim.warmup_steps=1", "engine.tensorboard=false"]
    shape = {"d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden_size": 64, "max_sequence_length": 64}
    a = argparse.Namespace(steps=2, warmup=1, json=str(tmp_path / "mfu.json"), model_config=json.dumps(shape), set=sets,
                           sync_debug=True, sync_steps=2)
    T.cmd_mfu(a)
    res = json.loads((tmp_path / "mfu.json").read_text())
    assert res["steps"] == 2 and res["host_syncs"] is None
    assert "Stage-1 step: host syncs not counted (CUDA's sync debug mode needs a GPU)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--sync-steps must be >= 1"):
        T.sync_steps(argparse.Namespace(sync_debug=True, sync_steps=0))
