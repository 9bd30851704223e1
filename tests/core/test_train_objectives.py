"""Objectives: LLaDA's 1/t-weighted loss, Stage-3 draft labels vs the edit-label module, R2FT losers, and
every stage driving its loss down on a small batch."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refinery.core.train.objectives import weighted_ce

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_helpers as H  # noqa: E402

SPECIAL = {"pad_token_id": 1, "eos_token_id": 1, "delete_token_id": 62, "mask_token_id": 63}


def test_weighted_ce_normalisations_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, 3], [4, 0, 1]])
    where = torch.tensor([[True, False, True], [False, False, True]])
    t = torch.tensor([0.5, 0.25])
    weight = (1 / t)[:, None].expand(2, 3)
    denom = torch.tensor([3, 2])
    ce = lambda b, i: -F.log_softmax(logits[b, i], -1)[targets[b, i]].item()  # noqa: E731
    row0 = (ce(0, 0) + ce(0, 2)) / 0.5
    row1 = ce(1, 2) / 0.25
    tokens = weighted_ce(logits, targets, where, weight, denom, "tokens").item()
    masked = weighted_ce(logits, targets, where, weight, denom, "masked").item()
    assert math.isclose(tokens, (row0 / 3 + row1 / 2) / 2, rel_tol=1e-5)
    assert math.isclose(masked, (row0 + row1) / 3, rel_tol=1e-5)


def test_stage3_labels_for_hand_made_draft_match_edit_labels():
    from refinery.core.edit_labels import edit_labels
    from refinery.core.train.stage3 import IGNORE, draft_targets

    prompts = [np.array([10, 11, 12]), np.array([13])]
    truths = [np.array([20, 21, 22, 2]), np.array([30, 31, 2])]
    drafts = [np.array([20, 25, 22, 22, 2]), np.array([30, 31, 2])]  # row 1: already right
    ids, attn, cur_t, next_t = draft_targets(prompts, drafts, truths, SPECIAL)
    assert ids.shape == (2, 8)
    for b, (p, d, t) in enumerate(zip(prompts, drafts, truths)):
        P, n = len(p), len(d)
        lab = edit_labels(d, t, delete_id=62, eos_id=1, ignore_index=IGNORE)
        assert ids[b, :P + n].tolist() == [*p, *d] and attn[b].sum() == P + n
        assert cur_t[b, P:P + n].tolist() == lab.cur_labels.tolist()
        assert next_t[b, P:P + n].tolist() == lab.next_labels.tolist()
        assert next_t[b, P - 1] == lab.gap0_label
        assert (cur_t[b, :P] == IGNORE).all() and (next_t[b, :P - 1] == IGNORE).all()
        assert (cur_t[b, P + n:] == IGNORE).all() and (next_t[b, P + n:] == IGNORE).all()
    # a correct draft is labelled "keep every token, insert nothing" (independent of the module's internals)
    assert cur_t[1, 1:4].tolist() == [30, 31, 2] and next_t[1, 0:4].tolist() == [30, 31, 2, 1]
    # the wrong token 25 must not be kept, and exactly one of the doubled 22s goes
    assert cur_t[0, 4] != 25 and (cur_t[0, 3:8] == 62).sum() == 1


def test_r2ft_loser_tiles_the_context_before_the_suffix():
    from refinery.core.train.data import collate_chat, ChatExample
    from refinery.core.train.r2ft import suffix_and_loser

    ex = [ChatExample(np.array([5, 6]), np.array([20, 21, 22, 23, 24, 2]))]
    batch = collate_chat(ex, pad_len=8, seq_len=64, eos_id=1)  # response padded to 8: cols 2..9
    suffix, loser = suffix_and_loser(batch, frac=torch.tensor([0.5]), ns=torch.tensor([3]))
    # suffix = second half of the padded response: cols 6..9; context before it: 21 22 23 (cols 3..5)
    assert suffix[0].tolist() == [False] * 6 + [True] * 4
    assert loser[0].tolist() == [5, 6, 20, 21, 22, 23, 21, 22, 23, 21]
    suffix, loser = suffix_and_loser(batch, frac=torch.tensor([1.0]), ns=torch.tensor([4]))
    # the whole response is masked; the context reaches back into the prompt, clipped to what exists
    assert suffix[0].tolist() == [False] * 2 + [True] * 8
    assert loser[0].tolist() == [5, 6, 5, 6, 5, 6, 5, 6, 5, 6]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return H.make_workspace(tmp_path_factory.mktemp("ws"))


@pytest.mark.parametrize("stage,data,extra,key", [
    ("pretrain", "text", {"optim.max_steps": 80}, "loss"),
    ("sft", "sft", {"optim.max_steps": 60}, "loss"),
    ("stage3", "sft", {"stage3.intermediate_ratio": 1.0}, "loss"),
    ("r2ft", "sft", {}, "loss"),
])
def test_each_stage_drives_its_loss_down(ws, tmp_path, stage, data, extra, key):
    from refinery.core.train.config import load_config
    from refinery.core.train.engine import Trainer

    out = tmp_path / stage
    cfg = load_config(H.TINY / f"tiny_{stage}.yaml",
                      H.tiny_overrides(ws, data, out, **{"engine.save_every": 0, **extra}))
    Trainer(cfg).train()
    m = H.read_metrics(out)
    assert len(m) == cfg.optim.max_steps and all(math.isfinite(r["loss"]) for r in m)
    assert H.loss_ratio(m, key, k=10) < 0.7
    if stage == "stage3":
        assert all(r["draft_step"] == 1.0 for r in m)  # every step trained on the model's own drafts
        assert H.loss_ratio(m, "loss_next", k=10) < 0.7
    if stage == "r2ft":
        assert m[-1]["lp_w"] > m[0]["lp_w"] and m[-1]["lp_l"] < m[-1]["lp_w"]


def test_stage3_mixes_draft_and_masked_steps_with_edit_curriculum(ws, tmp_path):
    """intermediate_ratio 0.5 gives both kinds of steps; the edit passes of the curriculum run through the
    'edit' strategy of the one decode loop (counted by the draft steps' changed-token share being finite)."""
    from refinery.core.train.config import load_config
    from refinery.core.train.engine import Trainer
    from refinery.core.train.stage3 import edit_passes_at

    over = {"optim.max_steps": 12, "engine.save_every": 0, "stage3.max_diffusion_steps": 2,
            "stage3.curriculum_steps": 6}
    cfg = load_config(H.TINY / "tiny_stage3.yaml", H.tiny_overrides(ws, "sft", tmp_path / "s3", **over))
    assert [edit_passes_at(s, 12, cfg) for s in (0, 2, 4, 6, 11)] == [0, 1, 2, 2, 2]
    Trainer(cfg).train()
    m = H.read_metrics(tmp_path / "s3")
    kinds = {r["draft_step"] for r in m}
    assert kinds == {0.0, 1.0}
    assert {r["draft_edit_passes"] for r in m if r["draft_step"] == 1.0 and r["step"] > 6} == {2.0}


def test_stage3_uniform_edit_passes_draws_every_count(ws, tmp_path):
    from refinery.core.train.config import load_config
    from refinery.core.train.engine import Trainer

    over = {"optim.max_steps": 10, "engine.save_every": 0, "stage3.max_diffusion_steps": 2,
            "stage3.curriculum_steps": 1, "stage3.intermediate_ratio": 1.0, "stage3.edit_passes_sampling": "uniform"}
    cfg = load_config(H.TINY / "tiny_stage3.yaml", H.tiny_overrides(ws, "sft", tmp_path / "s3", **over))
    Trainer(cfg).train()
    counts = [r["draft_edit_passes"] for r in H.read_metrics(tmp_path / "s3")]
    assert len(counts) == 10 and set(counts) == {0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="edit_passes_sampling"):
        load_config(H.TINY / "tiny_stage3.yaml", H.tiny_overrides(ws, "sft", tmp_path / "x",
                                                                  **{"stage3.edit_passes_sampling": "sometimes"}))


def test_gradient_checkpointing_option_reaches_every_block(ws, tmp_path):
    from refinery.core.train.config import load_config
    from refinery.core.train.engine import Trainer

    over = {"optim.max_steps": 3, "engine.save_every": 0, "model.gradient_checkpointing": True}
    trainer = Trainer(load_config(H.TINY / "tiny_sft.yaml", H.tiny_overrides(ws, "sft", tmp_path / "gc", **over)))
    trainer.train()  # the model is built inside train()
    assert all(getattr(block, "gradient_checkpointing", False) for block in trainer.model.layers)
    assert len(H.read_metrics(tmp_path / "gc")) == 3
