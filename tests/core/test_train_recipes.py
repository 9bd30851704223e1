"""Training recipes: `recipe:` fills a paper's field values through the typed config; the medlm (ME-DLM)
and conv-paper (Conv R2FT) recipes give the same losses as independent ports of the reference code
(tests/core/recipe_ports/) on fixed batches and a tiny random model; medlm trains the tiny Stage-3 config."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from refinery.core.train.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_helpers as H  # noqa: E402
from _train_helpers import DEL, EOS, EOT, MASK, SPECIAL, cfg_for, chat_batch  # noqa: E402
from recipe_ports import conv_r2ft, medlm  # noqa: E402


model = pytest.fixture(scope="module")(H.objective_model)


# ---------------------------------------------------------------------------------------------- config


def test_recipe_fills_fields_and_explicit_keys_override(tmp_path):
    base = cfg_for("stage3")
    assert base.recipe == "project" and base == cfg_for("stage3", "project")  # project = today's behaviour
    cfg = cfg_for("stage3", "medlm", stage3={"k_choices": [2, 4]})
    s3, o = cfg.stage3, cfg.objective
    assert (s3.intermediate_ratio, s3.rollout_order, s3.full_rollout) == (0.5, "random", True)
    assert (s3.max_diffusion_steps, s3.curriculum, s3.draft_loss_weight) == (32, "epoch_fraction", "inverse_t")
    assert (s3.labels, s3.draft_padding, s3.ignore_deleted_gaps) == ("medlm", "strip", True)
    assert s3.k_choices == (2, 4)  # the explicit key wins over the recipe's (2, 4, 8, 16)
    assert (o.t_sampling, o.normalize, o.mask_first_response_token) == ("micro_batch", "masked", False)
    r = cfg_for("r2ft", "conv-paper", r2ft={"beta_a": 0.5}).r2ft
    assert (r.rejected, r.phrase_len, r.span_len, r.lp_reduction, r.batch_reduction, r.beta_a) == \
        ("phrase_span", (1, 14), (30, 49), "length", "sum", 0.5)
    path = tmp_path / "c.yaml"
    path.write_text("stage: sft\nrecipe: medlm\ntokenizer: t\ndata: {train_files: [a]}\n")
    assert load_config(path).objective.t_sampling == "micro_batch"


@pytest.mark.parametrize("text,needle", [
    ("stage: sft\nrecipe: medln\n", "Did you mean 'medlm'"),
    ("stage: r2ft\nrecipe: medlm\n", "'medlm' is a recipe for stage(s)"),
    ("stage: sft\nrecipe: conv-paper\n", "not 'sft'"),
    ("stage: r2ft\nr2ft: {span_len: [30]}\n", "r2ft.span_len"),
    ("stage: stage3\nstage3: {draft_loss_weight: inverse_t}\n", "stage3.draft_loss_weight"),
    ("stage: stage3\nrecipe: medlm\nstage3: {rollout_order: sideways}\n", "stage3.rollout_order"),
])
def test_bad_recipes_name_the_file_and_key(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "tokenizer: t\ndata: {train_files: [a]}\n")
    with pytest.raises(ValueError) as e:
        load_config(path)
    assert str(path) in str(e.value) and needle in str(e.value)


# ------------------------------------------------------------------------------------------- Stage 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_medlm_masked_loss_equals_the_port(model, seed):
    from refinery.core.train.objectives import SFTObjective

    batch = chat_batch(seed)
    cfg = cfg_for("sft", "medlm")
    ours = SFTObjective(cfg, SPECIAL).loss(model, batch, torch.Generator().manual_seed(seed), 0).loss.item()
    # the port draws the same stream: one t, then a uniform per (row, column) of the batch
    gen = torch.Generator().manual_seed(seed)
    o = cfg.objective
    t = o.min_t + (o.max_t - o.min_t) * torch.rand(1, generator=gen).item()
    u = torch.rand(batch.input_ids.shape, generator=gen)
    ends = (batch.prompt_len + batch.response_mask.sum(1)).tolist()
    examples = [(int(batch.prompt_len[b]), batch.input_ids[b, :e]) for b, e in enumerate(ends)]
    port = medlm.mask_step_loss(model, examples, [u[b, :e] for b, e in enumerate(ends)], t, MASK).item()
    assert math.isclose(ours, port, rel_tol=1e-5), (ours, port)
    # the project's loss is a different quantity on the same stream (the test can fail)
    project = SFTObjective(cfg_for("sft"), SPECIAL).loss(model, batch, torch.Generator().manual_seed(seed), 0)
    project = project.loss.item()
    assert not math.isclose(project, port, rel_tol=1e-3)


def test_medlm_never_masks_the_first_response_token():
    from refinery.core.train.objectives import chat_eligible

    batch = chat_batch(5, n_rows=4)
    elig = chat_eligible(batch, mask_first=False)
    for b in range(4):
        P = int(batch.prompt_len[b])
        assert not elig[b, P] and elig[b, P + 1:].sum() == batch.response_mask[b].sum() - 1
    assert torch.equal(chat_eligible(batch, mask_first=True), batch.response_mask)


# ------------------------------------------------------------------------------------------- Stage 3


def edited(truth: np.ndarray, rng) -> np.ndarray:
    """A draft a few isolated edits away from ``truth`` (distinct tokens, so the optimal script is unique):
    a replacement, a deletion and an insertion of fresh tokens, spaced apart; the final end-of-turn stays."""
    d = list(truth[:-1])
    ops = rng.permutation(["rep", "del", "ins", "none"])[:3]
    for i, op in zip(range(0, len(d), 3), ops):
        if op == "rep":
            d[i] = 90 + i % 5
        elif op == "del":
            d[i] = -1
        elif op == "ins":
            d[i] = (d[i], 80 + i % 5)
    out = []
    for x in d:
        out.extend(x if isinstance(x, tuple) else ([] if x == -1 else [x]))
    return np.array(out + [EOT], dtype=np.int64)


def draft_rows(seed: int, n_rows: int = 3):
    rng = np.random.default_rng(seed)
    prompts, drafts, truths = [], [], []
    for _ in range(n_rows):
        truth = np.append(rng.permutation(np.arange(3, 60))[:int(rng.integers(4, 12))], EOT).astype(np.int64)
        prompts.append(rng.integers(3, 98, int(rng.integers(2, 7))).astype(np.int64))
        truths.append(truth)
        drafts.append(edited(truth, rng))
    return prompts, drafts, truths


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_medlm_draft_labels_and_loss_equal_the_port(model, seed):
    from refinery.core.train.stage3 import IGNORE, Stage3Objective, label_rows

    prompts, drafts, truths = draft_rows(seed)
    for (cur, nxt, gap0), d, t in zip(label_rows(drafts, truths, SPECIAL, True, "medlm"), drafts, truths):
        tok, gap = medlm.edit_labels(list(d[:-1]), list(t[:-1]), DEL, EOT)
        assert cur.tolist() == tok + [EOT]
        assert [int(gap0)] + nxt.tolist() == gap + [IGNORE]
    cfg = cfg_for("stage3", "medlm")
    t = 0.37
    ours = Stage3Objective(cfg, SPECIAL).draft_loss(model, prompts, drafts, truths, torch.tensor(t)).loss.item()
    port = medlm.draft_step_loss(model, list(zip(prompts, drafts, truths)), t, DEL, EOT).item()
    assert math.isclose(ours, port, rel_tol=1e-5), (ours, port)
    project = Stage3Objective(cfg_for("stage3"), SPECIAL).draft_loss(model, prompts, drafts, truths).loss.item()
    assert not math.isclose(project, port, rel_tol=1e-3)


def test_medlm_rollout_runs_until_no_mask_is_left_in_random_order(model):
    """Full rollouts: ceil(most masks in a row / k) forwards, no mask left, the first answer token and every
    unmasked token kept; random order: the committed positions are not the most confident ones."""
    from refinery.core.train.stage3 import Stage3Objective

    batch = chat_batch(7, n_rows=3, pad_len=16)
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        for order in ("random", "confidence"):
            s3 = {"k_choices": [2], "max_diffusion_steps": 0, "rollout_order": order}
            cfg = cfg_for("stage3", "medlm", stage3=s3, objective={"min_t": 0.9, "max_t": 1.0})
            obj = Stage3Objective(cfg, SPECIAL)
            gen = torch.Generator().manual_seed(3)
            calls.clear()
            prompts, drafts, truths, n_edit, t = obj.rollout(model, batch, gen, 0)
            rows = [(int(batch.prompt_len[b]), int(batch.response_mask[b].sum())) for b in range(3)]
            init, t2 = obj.masked_answers(batch.input_ids, [(P, r, 0) for P, r in rows], max(r for _, r in rows),
                                          torch.Generator().manual_seed(3))
            assert torch.equal(t, t2) and len(set(t.tolist())) == 1  # one t per micro-batch
            masks = (init == MASK).sum(1)
            assert len(calls) == -(-int(masks.max()) // 2) and int(masks.max()) > 4
            assert not (init[:, 0] == MASK).any()  # the first answer token is never masked
            assert all(MASK not in d and EOS not in d for d in drafts)
            if order == "random":
                random_drafts = drafts
    finally:
        hook.remove()
    assert any(a.tolist() != b.tolist() for a, b in zip(random_drafts, drafts))


def test_epoch_fraction_curriculum_reaches_32_passes_over_training():
    from refinery.core.train.stage3 import edit_passes_at

    cfg = cfg_for("stage3", "medlm")
    assert [edit_passes_at(s, 100, cfg) for s in (0, 3, 4, 50, 99)] == [0, 0, 1, 16, 31]
    ramp = cfg_for("stage3", stage3={"max_diffusion_steps": 2, "curriculum_steps": 6})
    assert [edit_passes_at(s, 12, ramp) for s in (0, 2, 4, 6, 11)] == [0, 1, 2, 2, 2]  # unchanged


def test_strip_drops_every_pad_of_the_draft():
    from refinery.core.train.stage3 import Stage3Objective

    obj = Stage3Objective(cfg_for("stage3", "medlm"), SPECIAL)
    tokens = torch.tensor([[5, EOS, 6, 7, EOS, EOS], [EOS, 8, EOS, 9, 10, 11]])
    packed, lengths = obj.draft_region(tokens)
    assert lengths.tolist() == [3, 4] and packed.tolist() == [[5, 6, 7, EOS, EOS, EOS], [8, 9, 10, 11, EOS, EOS]]
    cut, lengths = Stage3Objective(cfg_for("stage3"), SPECIAL).draft_region(tokens)
    assert lengths.tolist() == [1, 0] and torch.equal(cut, tokens)


def test_medlm_stage3_trains_the_tiny_config_end_to_end(tmp_path):
    from refinery.core.model import LLaDAModel
    from refinery.core.train.engine import Trainer

    ws = H.make_workspace(tmp_path / "ws")
    out = tmp_path / "s3"
    # tiny_stage3.yaml's own stage3 keys win over the recipe: restore ME-DLM's where the file sets its own
    # (a 64-step curriculum horizon: these 8 steps see the first 0-3 of its 32 edit passes)
    over = {"recipe": "medlm", "optim.max_steps": 8, "engine.save_every": 4, "stage3.k_choices": [4, 8],
            "stage3.max_diffusion_steps": 32, "stage3.curriculum_steps": 64}
    cfg = load_config(H.TINY / "tiny_stage3.yaml", H.tiny_overrides(ws, "sft", out, **over))
    assert cfg.stage3.full_rollout and cfg.stage3.labels == "medlm" and cfg.objective.t_sampling == "micro_batch"
    Trainer(cfg).train()
    m = H.read_metrics(out)
    assert len(m) == 8 and all(math.isfinite(r["loss"]) for r in m)
    drafts = [r for r in m if r["draft_step"] == 1.0]
    assert 2 <= len(drafts) < 8 and any(r["draft_edit_passes"] > 0 for r in drafts)  # both kinds; edits ran
    assert drafts[-1]["loss_cur"] < drafts[0]["loss_cur"]  # the unweighted draft CE goes down
    assert any((out / "checkpoints").iterdir())
    back = LLaDAModel.from_pretrained(str(out), local_files_only=True)
    assert back.next_token_head is not None


# ------------------------------------------------------------------------------------------------ R2FT


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_paper_r2ft_loss_equals_the_port(model, seed):
    from refinery.core.train.r2ft import R2FTObjective

    batch = chat_batch(seed, n_rows=3, prompt_min=15)
    ours = R2FTObjective(cfg_for("r2ft", "conv-paper"), SPECIAL).loss(model, batch, torch.Generator().manual_seed(seed),
                                                                        0).loss.item()
    ends = (batch.prompt_len + batch.response_mask.sum(1)).tolist()
    examples = [(batch.input_ids[b, :e], int(batch.prompt_len[b]), int(batch.target_len[b]))
                for b, e in enumerate(ends)]
    port = conv_r2ft.r2ft_loss(model, examples, torch.Generator().manual_seed(seed), MASK, EOS).item()
    assert math.isclose(ours, port, rel_tol=1e-5), (ours, port)
    project = R2FTObjective(cfg_for("r2ft"), SPECIAL).loss(model, batch, torch.Generator().manual_seed(seed), 0)
    assert not math.isclose(project.loss.item(), port, rel_tol=1e-3)


def test_conv_paper_rejected_sample_matches_the_port_and_its_distribution():
    """Same stream -> the same loser as the port; over many draws: the span is 30-49 long and starts at a cut
    inside the answer, it repeats a 1-14-token phrase that ends at the cut, with exactly one eos that is not
    the span's last token; most phrase and span lengths turn up."""
    from refinery.core.train.r2ft import phrase_span_pair

    r = cfg_for("r2ft", "conv-paper").r2ft
    gen, gen_port = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    spans, phrases = set(), set()
    for draw in range(60):
        batch = chat_batch(draw, n_rows=2, prompt_min=15)
        pair = phrase_span_pair(batch, r, MASK, EOS, gen)
        for b in range(2):
            x0, P, n = batch.input_ids[b], int(batch.prompt_len[b]), int(batch.target_len[b])
            c, z, loser = conv_r2ft.rejected_sample(x0, P, n, gen_port, EOS)
            span = pair.lose[b].nonzero()[:, 0]
            assert int(span[0]) == c and len(span) == z and P <= c < P + n and 30 <= z <= 49
            got = pair.loser[b, c:c + z]
            assert got.tolist() == loser[c:c + z].tolist()
            assert (got == EOS).sum() == 1 and got[-1] != EOS and (pair.xt[b, c:] == MASK).sum() >= z
            assert (pair.xt[b, :c] == x0[:c]).all()
            vals = got.tolist()
            period = next(p for p in range(1, 15) if all(vals[i] == vals[i + p] for i in range(z - p)
                                                         if EOS not in (vals[i], vals[i + p])))
            assert {v for v in vals if v != EOS} == set(x0[c - period:c].tolist())  # the phrase ending at the cut
            phrases.add(period)
            spans.add(z)
    assert spans <= set(range(30, 50)) and len(spans) >= 15
    assert phrases <= set(range(1, 15)) and len(phrases) >= 8


# ------------------------------------------------------------------------------- project stays as it was


def test_project_recipe_keeps_llada_sft_loss_and_the_suffix_tile_r2ft(model):
    """The default recipe: LLaDA's per-row t, sum of CE / t over masked tokens / padded response length,
    averaged; R2FT: the suffix-tiling loser, per-token means, rows averaged (written out by hand here)."""
    import torch.nn.functional as F

    from refinery.core.train.objectives import SFTObjective
    from refinery.core.train.r2ft import R2FTObjective, suffix_and_loser

    batch = chat_batch(4, n_rows=3)
    cfg = cfg_for("sft", objective={"next_head_weight": 0.0})
    ours = SFTObjective(cfg, SPECIAL).loss(model, batch, torch.Generator().manual_seed(4), 0).loss.item()
    gen = torch.Generator().manual_seed(4)
    t = cfg.objective.min_t + (cfg.objective.max_t - cfg.objective.min_t) * torch.rand(3, generator=gen)
    masked = (torch.rand(batch.input_ids.shape, generator=gen) < t[:, None]) & batch.response_mask
    assert masked[torch.arange(3), batch.prompt_len].any()  # the first answer token can be masked here
    xt = torch.where(masked, torch.full_like(batch.input_ids, MASK), batch.input_ids)
    logp = F.log_softmax(model(xt, attention_mask=batch.attention_mask).logits.float(), -1)
    ce = -logp.gather(2, batch.input_ids[..., None])[..., 0]
    rows = [(ce[b][masked[b]] / t[b]).sum() / batch.response_mask[b].sum() for b in range(3)]
    assert math.isclose(ours, torch.stack(rows).mean().item(), rel_tol=1e-5)

    r = cfg_for("r2ft").r2ft
    ours = R2FTObjective(cfg_for("r2ft"), SPECIAL).loss(model, batch, torch.Generator().manual_seed(4), 0).loss.item()
    gen = torch.Generator().manual_seed(4)
    frac = r.min_suffix_frac + (1 - r.min_suffix_frac) * torch.rand(3, generator=gen)
    ns = torch.tensor(r.repeat_ns)[torch.randint(len(r.repeat_ns), (3,), generator=gen)]
    suffix, loser = suffix_and_loser(batch, frac, ns)
    xt = torch.where(suffix, torch.full_like(batch.input_ids, MASK), batch.input_ids)
    logp = F.log_softmax(model(xt, attention_mask=batch.attention_mask).logits.float(), -1)
    lw = [logp[b][suffix[b]].gather(1, batch.input_ids[b][suffix[b]][:, None]).mean() for b in range(3)]
    ll = [logp[b][suffix[b]].gather(1, loser[b][suffix[b]][:, None]).mean() for b in range(3)]
    expect = [-F.logsigmoid(r.beta_w * w - r.beta_l * lo - r.gamma) - r.beta_a * w for w, lo in zip(lw, ll)]
    assert math.isclose(ours, torch.stack(expect).mean().item(), rel_tol=1e-5)


def test_unknown_edit_preset_fails_before_training():
    from refinery.core.train.stage3 import Stage3Objective

    with pytest.raises(ValueError, match="stage3.edit_preset"):
        Stage3Objective(cfg_for("stage3", "medlm", stage3={"edit_preset": "papr"}), SPECIAL)
