"""Paper presets against independent ports of the reference samplers (tests/strategies/ports/).

Greedy settings: token-for-token equality over lengths, budgets, block sizes and ragged (left-padded)
batches, on scripted and tiny random models. Sampling settings: the port consumes the strategy's own
per-row random stream (same tokens expected), or, where the reference draws its noise in a different
shape, a distributional comparison that a wrong sampler fails.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from tiny_models import EOS, EOT, MASK, VOCAB
from refinery.core.decode import generate, left_pad
from ports import conv
from ports import masked as llada
from ports import remdm as remdm_port
from ports import threshold as fast
from refinery.strategies import get_strategy, preset_params, strategy_class

PROMPTS = ([5, 6, 7], [9, 8, 7, 6, 5, 4, 3], [11])  # ragged: left-padded into one block


@pytest.fixture(scope="module")
def mask_predicting(tiny_model):
    """The tiny model with its mask-id output row set just above its most frequently predicted token's:
    wherever that token would win, the mask id wins instead (the case LLaDA leaves in the output)."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        ids = torch.randint(3, 60, (4, 24), generator=torch.Generator().manual_seed(0))
        ids[:, 8:] = MASK
        top = Counter(model(ids).logits.argmax(-1).flatten().tolist()).most_common(1)[0][0]
        model.lm_head.weight[MASK] = model.lm_head.weight[top] * 1.001
    return model


def padded(prompts, pad_id):
    ids, mask = left_pad(prompts, pad_id, "cpu")
    return ids, (None if bool(mask.all()) else mask.long())


class RowStream:
    """The strategy's randomness, replayed for a port that draws over the whole canvas: the region columns
    come from one generator per row seeded like ``generate``'s (same order, shapes and dtypes), the
    prompt columns (never used by the reference, which scores only masks) get a constant."""

    def __init__(self, batch: int, prompt_width: int, seed: int = 0):
        self.gens = [torch.Generator().manual_seed(seed) for _ in range(batch)]
        self.P = prompt_width

    def __call__(self, shape, dtype=torch.float32):
        out = torch.full(tuple(shape), 0.5, dtype=dtype)
        region = (shape[1] - self.P,) + tuple(shape[2:])
        out[:, self.P:] = torch.stack([torch.rand(region, generator=g, dtype=dtype) for g in self.gens])
        return out


def run_llada_port(model, prompts, gen_length, steps, block_length, rand=torch.rand, **kw):
    ids, attn = padded(prompts, model.config.pad_token_id)
    c = model.config
    out = llada.generate(model, ids, attention_mask=attn, steps=steps, gen_length=gen_length,
                         block_length=block_length, mask_id=c.mask_token_id, eos_id=c.eos_token_id,
                         eot_id=c.eot_token_id, rand=rand, **kw)
    return out[:, ids.shape[1]:]


def run_ours(model, prompts, gen_length, budget, name, preset="paper", seed=0, **params):
    return generate(model, prompts, gen_length, get_strategy(name, preset=preset, **params), budget, seed=seed,
                    record_trace=False)


# ---------------------------------------------------------------- masked / LLaDA


@pytest.mark.parametrize("gen_length,budget,block", [(8, "1/1", 8), (12, "1/2", 4), (16, "1/4", 8), (16, "3/8", 16),
                                                     (24, "1/2", 8)])
def test_masked_paper_equals_llada_port_greedy_ragged(tiny_model, gen_length, budget, block):
    ours = run_ours(tiny_model, PROMPTS, gen_length, budget, "masked", block_length=block)
    steps = int(ours.max_nfe)
    ref = run_llada_port(tiny_model, PROMPTS, gen_length, steps, block)
    assert torch.equal(ours.tokens, ref)


@pytest.mark.parametrize("gen_length,budget,block", [(8, "1/1", 8), (12, "1/2", 4), (16, "1/4", 4), (16, "1/2", 16)])
def test_masked_paper_equals_llada_port_when_the_model_predicts_the_mask_id(mask_predicting, gen_length, budget, block):
    ours = run_ours(mask_predicting, PROMPTS, gen_length, budget, "masked", block_length=block)
    ref = run_llada_port(mask_predicting, PROMPTS, gen_length, int(ours.max_nfe), block)
    assert torch.equal(ours.tokens, ref)


def test_the_mask_predicting_model_really_leaves_masks_and_the_project_preset_does_not(mask_predicting):
    paper = run_ours(mask_predicting, PROMPTS, 16, "1/4", "masked", block_length=8)
    project = run_ours(mask_predicting, PROMPTS, 16, "1/4", "masked", preset="project", block_length=8)
    assert (paper.tokens == MASK).any()  # LLaDA's output keeps a predicted mask id
    assert not (project.tokens == MASK).any()
    assert paper.nfe.max() <= paper.max_nfe


@pytest.mark.parametrize("opts", [dict(logits_eos_inf=True), dict(confidence_eos_eot_inf=True),
                                  dict(logits_eos_inf=True, confidence_eos_eot_inf=True)])
def test_masked_paper_eos_options_equal_the_port(tiny_model, scripted, opts):
    ours = run_ours(tiny_model, PROMPTS, 16, "1/2", "masked", block_length=8, **opts)
    assert torch.equal(ours.tokens, run_llada_port(tiny_model, PROMPTS, 16, 8, 8, **opts))

    def eos_heavy(ids):  # end-of-text / end-of-turn are the confident predictions at the odd positions
        logits = torch.zeros(ids.shape[0], ids.shape[1], VOCAB)
        logits[..., 20] = 2.0
        logits[:, 1::4, EOS] = 6.0
        logits[:, 3::4, EOT] = 5.0
        return logits, None

    model = scripted(eos_heavy)
    ours = run_ours(model, [[3, 4]], 8, "1/2", "masked", **opts)
    assert torch.equal(ours.tokens, run_llada_port(model, [[3, 4]], 8, 4, 8, **opts))
    if opts.get("logits_eos_inf"):
        assert not (ours.tokens == EOS).any()


def test_masked_paper_sampling_consumes_the_same_stream_as_the_port(tiny_model):
    for remasking in ("low_confidence", "random"):
        ours = run_ours(tiny_model, PROMPTS, 12, "1/2", "masked", block_length=4, temperature=1.0,
                        remasking=remasking, seed=3)
        P = max(len(p) for p in PROMPTS)
        ref = run_llada_port(tiny_model, PROMPTS, 12, 6, 4, rand=RowStream(len(PROMPTS), P, seed=3),
                             temperature=1.0, remasking=remasking)
        assert torch.equal(ours.tokens, ref), remasking


def test_masked_paper_guidance_counts_two_forwards_per_llada_step(tiny_model):
    ours = run_ours(tiny_model, PROMPTS, 8, "1/1", "masked", cfg_scale=1.5, block_length=4)  # 8 NFE = 4 steps
    assert ours.nfe.tolist() == [8, 8, 8]
    assert torch.equal(ours.tokens, run_llada_port(tiny_model, PROMPTS, 8, 4, 4, cfg_scale=1.5))


@pytest.mark.parametrize("budget,params", [("3/8", dict(block_length=4)), ("3/8", dict(cfg_scale=1.0)),
                                           ("3/4", dict(block_length=4, cfg_scale=1.0))])
def test_masked_paper_refuses_steps_that_do_not_divide_as_llada_does(tiny_model, budget, params):
    # 16 tokens: 3/8 -> 6 passes (not over 4 blocks; 3 steps at cost 2 is fine), 3/4 -> 12 passes = 6 steps / 4 blocks
    if params == dict(cfg_scale=1.0):
        run_ours(tiny_model, [[5]], 16, budget, "masked", **params)  # 6 NFE = 3 steps: accepted
        with pytest.raises(ValueError, match="uneven_steps"):
            run_ours(tiny_model, [[5]], 16, "5/16", "masked", **params)  # 5 NFE: half a step
        return
    with pytest.raises(ValueError, match="uneven_steps"):
        run_ours(tiny_model, [[5]], 16, budget, "masked", **params)
    run_ours(tiny_model, [[5]], 16, budget, "masked", preset="project", **params)  # the project splits them


# ---------------------------------------------------------------- threshold / Fast-dLLM


def run_fast_port(model, prompts, gen_length, block_length=32, threshold=0.9, **kw):
    ids, attn = padded(prompts, model.config.pad_token_id)
    out = fast.generate(model, ids, attention_mask=attn, gen_length=gen_length, block_length=block_length,
                        threshold=threshold, mask_id=model.config.mask_token_id, **kw)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("gen_length,block,tau", [(32, 32, 0.9), (16, 4, 0.5), (24, 8, 0.3), (12, 12, 0.99)])
def test_threshold_paper_equals_fast_dllm_port_greedy_ragged(tiny_model, mask_predicting, gen_length, block, tau):
    for model in (tiny_model, mask_predicting):
        ours = run_ours(model, PROMPTS, gen_length, "1/1", "threshold", block_length=block, threshold=tau)
        # a model that predicts the mask id can make the uncapped reference loop forever: cap it at L passes
        cap = gen_length if model is mask_predicting else None
        assert torch.equal(ours.tokens, run_fast_port(model, PROMPTS, gen_length, block, tau, max_passes=cap))
        if model is tiny_model and tau < 0.95:
            assert (ours.nfe < gen_length).any()  # the threshold commits several per pass


def test_threshold_paper_commits_at_exactly_tau_and_nothing_is_forced(scripted):
    # the predicted token's probability is exactly 0.5 (two equal top logits) or 0.25 at region positions 2, 4, 6
    def fn(ids):
        logits = torch.full((ids.shape[0], ids.shape[1], VOCAB), -1e4)
        logits[:, :, 10] = logits[:, :, 11] = 0.0  # p = 0.5 each (argmax: 10)
        logits[:, 3::2, 12] = logits[:, 3::2, 13] = 0.0  # canvas columns 3, 5, 7 (prompt width 1): p = 0.25
        return logits, None

    model = scripted(fn)
    ours = generate(model, [[3]], 8, get_strategy("threshold", preset="paper", block_length=8, threshold=0.5), "1/1")
    first = ours.trace.records[0].unmasked[0].tolist()
    assert first == [True, True, False, True, False, True, False, True]  # >= 0.5 commits, 0.25 waits
    assert [int(r.unmasked[0].sum()) for r in ours.trace.records[1:]] == [1, 1, 1]  # then the top one: no allotment
    assert ours.nfe.tolist() == [4]
    strict = generate(model, [[3]], 8, get_strategy("threshold", threshold=0.5, block_length=8), "1/1")
    assert strict.trace.records[0].unmasked[0].sum() == 1  # the project's > tau


def test_threshold_paper_budget_cap_commits_everything_on_the_last_pass(tiny_model, mask_predicting):
    for model in (tiny_model, mask_predicting):
        for budget in ("1/8", "3/32"):
            ours = run_ours(model, PROMPTS, 32, budget, "threshold", block_length=8, threshold=0.99)
            cap = int(ours.max_nfe)
            assert ours.nfe.max() == cap
            assert torch.equal(ours.tokens, run_fast_port(model, PROMPTS, 32, 8, 0.99, max_passes=cap))
            if model is tiny_model:
                assert not (ours.tokens == MASK).any()


def test_threshold_paper_sampling_consumes_the_same_stream_as_the_port(tiny_model):
    ours = run_ours(tiny_model, PROMPTS[:1], 16, "1/1", "threshold", block_length=8, threshold=0.5, temperature=1.0,
                    seed=5)
    ref = run_fast_port(tiny_model, PROMPTS[:1], 16, 8, 0.5, temperature=1.0, rand=RowStream(1, 3, seed=5))
    assert torch.equal(ours.tokens, ref)


# ---------------------------------------------------------------- remdm / ReMDM (sampling: distributional)


def neighbour_script(ids):
    """Each position's distribution depends on its left neighbour: after token 10 it prefers 11, else 10.
    Probabilities 0.6 / 0.25 / 0.15 over (preferred, other, 12): ReMDM's nucleus p = 0.9 drops token 12."""
    B, W = ids.shape
    after10 = torch.cat([torch.zeros(B, 1, dtype=torch.bool), ids[:, :-1] == 10], 1)
    logits = torch.full((B, W, VOCAB), -50.0)
    hi, lo, tail = torch.tensor([0.6, 0.25, 0.15]).log()
    logits[..., 10] = torch.where(after10, lo, hi)
    logits[..., 11] = torch.where(after10, hi, lo)
    logits[..., 12] = tail
    return logits, None


def statistics(rows: torch.Tensor) -> torch.Tensor:
    """(N, L) samples -> per-position frequencies of tokens 10/11/12 and of adjacent (10|11) pairs, (L*3 + (L-1)*4,)."""
    feats = [(rows == t).double().mean(0) for t in (10, 11, 12)]
    for a in (10, 11):
        for b in (10, 11):
            feats.append(((rows[:, :-1] == a) & (rows[:, 1:] == b)).double().mean(0))
    return torch.cat(feats)


def ours_samples(model, n, gen_length, budget, preset, **params):
    strategy = get_strategy("remdm", preset=preset, **params)
    return torch.cat([generate(model, [[3]], gen_length, strategy, budget, seed=s, record_trace=False).tokens
                      for s in range(n)])


def remdm_port_samples(model, n, gen_length, steps, **kw):
    torch.manual_seed(0)
    out = remdm_port.generate(model, torch.full((n, 1), 3), gen_length=gen_length, steps=steps,
                              mask_id=MASK, **kw)
    return out[:, 1:]


@pytest.mark.parametrize("preset,params,port", [
    ("paper", dict(eta=0.5), dict(sampler="loop", eta=0.5)),
    ("paper-rescale", dict(eta=0.8), dict(sampler="rescale", eta=0.8)),
    ("paper-conf", {}, dict(sampler="conf")),
])
def test_remdm_paper_matches_the_port_in_distribution(scripted, preset, params, port):
    model, n, L = scripted(neighbour_script), 200, 6
    ours = ours_samples(model, n, L, "1/1", preset, **params)
    ref = remdm_port_samples(model, 2000, L, steps=L - 1, **port)  # the port batches: a large sample is cheap
    assert not (ours == MASK).any() and not (ours == 12).any()  # the nucleus cut and the final argmax
    gap = (statistics(ours) - statistics(ref)).abs().max()
    assert gap < 0.12, float(gap)
    # the same comparison tells a sampler without the nucleus (or a greedy one) apart
    full = ours_samples(model, 80, L, "1/1", preset, top_p=1.0, **params)
    assert (statistics(full) - statistics(ref)).abs().max() > 0.12
    greedy = ours_samples(model, 5, L, "1/1", "project")
    assert (statistics(greedy) - statistics(ref)).abs().max() > 0.12


def test_remdm_paper_presets_carry_the_scripts_settings():
    want = {"paper": ("loop", 0.02), "paper-cap": ("cap", 0.008), "paper-rescale": ("rescale", 0.015)}
    for preset, (schedule, eta) in want.items():
        p = preset_params("remdm", preset)
        assert (p["schedule"], p["eta"], p["top_p"], p["temperature"]) == (schedule, eta, 0.9, 1.0)
    assert preset_params("remdm", "paper-conf")["schedule"] == "conf"
    assert strategy_class("remdm")().config.eta == 0.04  # the dataclass default is unchanged


def test_remdm_reference_timing_spends_one_pass_on_noise_removal(tiny_model):
    res = generate(tiny_model, PROMPTS, 8, get_strategy("remdm", preset="paper-cap"), "1/1", seed=2)
    assert res.nfe.tolist() == [8, 8, 8] and not (res.tokens == MASK).any()
    last = res.trace.records[-1]
    assert last.remasked is None or not last.remasked.any()
    probe = get_strategy("remdm", preset="paper")
    t, s, a_t, a_s, final = probe.clock(8, 0)
    assert (t, final) == (1.0, False) and abs(s - (1 - (1 - 1e-5) / 7)) < 1e-12
    assert probe.clock(8, 7)[4] and not probe.clock(8, 6)[4]
    # the loop's phase is chosen by t: at t in (t_off, t_on] both alphas are alpha_on
    assert probe.alpha_pair(0.1, 0.01) == (0.9, 0.9)


# ---------------------------------------------------------------- conv / Conv (sampling: distributional)


@pytest.mark.parametrize("L,budget,window,k", [(8, "1/1", 3, 2), (8, "1/2", 5, 1), (12, "1/3", 128, 1)])
def test_conv_paper_consumes_the_same_stream_as_the_port(tiny_model, scripted, L, budget, window, k):
    """Gumbel-max over the weights (ours) and the reference's q / Exp(1) argmax are one draw from one uniform."""
    for model in (tiny_model, scripted(neighbour_script)):
        for prompt in ([5, 6, 7], [11]):
            ours = generate(model, [prompt], L, get_strategy("conv", preset="paper", window=window, top_k=k), budget,
                            seed=7, record_trace=False)
            ref = conv.generate(model, torch.tensor([prompt]), gen_length=L, steps=int(ours.max_nfe), mask_id=MASK,
                                kernel_size=window, k=k, rand=RowStream(1, len(prompt), seed=7),
                                noise_dtype=torch.float64)
            assert torch.equal(ours.tokens, ref[:, len(prompt):])


def test_conv_paper_normaliser_sums_the_top_k_plus_one(scripted):
    model = scripted(neighbour_script)  # top-1 mass 0.6, top-2 mass 0.85: the normaliser matters
    same, differ = 0, 0
    for seed in range(10):
        ref = conv.generate(model, torch.tensor([[3]]), gen_length=8, steps=8, mask_id=MASK, kernel_size=3, k=1,
                            rand=RowStream(1, 1, seed=seed), noise_dtype=torch.float64)[:, 1:]
        for norm, want in (("k+1", True), ("k", False)):
            ours = generate(model, [[3]], 8, get_strategy("conv", preset="paper", window=3, norm_top=norm), "1/1",
                            seed=seed, record_trace=False)
            if want:
                assert torch.equal(ours.tokens, ref)
                same += 1
            else:
                differ += not torch.equal(ours.tokens, ref)
    assert same == 10 and differ >= 2


def test_conv_paper_preset_settings_and_reference_clock(tiny_model):
    p = preset_params("conv", "paper")
    assert (p["variant"], p["window"], p["temperature"], p["norm_top"], p["top_k"]) == \
        ("stochastic", 128, 1.0, "k+1", 1)
    res = generate(tiny_model, PROMPTS, 8, get_strategy("conv", preset="paper"), "1/2", seed=1)
    assert res.nfe.max() <= 4 and res.trace.records  # S = 4 steps, no extra pass
    assert strategy_class("conv")().config.window == 32  # the dataclass default is unchanged


# ---------------------------------------------------------------- the command line


def test_strategies_presets_lists_one_line_per_strategy_and_preset(capsys):
    from refinery.cli import main

    assert main(["strategies", "--presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {tuple(line.split()[:2]): line for line in lines}
    for name in ("masked", "remdm", "conv", "threshold"):
        assert (name, "paper") in table and (name, "project") in table
        assert strategy_class(name).presets["paper"].about in table[(name, "paper")]
    assert ("remdm", "paper-rescale") in table


def test_decode_takes_a_preset_and_a_bad_one_is_one_line(tiny_checkpoint, capsys):
    from refinery.cli import main

    base = ["decode", "Tom has 3 apples", "--model", str(tiny_checkpoint), "--budget", "1/4", "--gen-length", "8"]
    assert main(base + ["--preset", "paper", "--param", "block_length=4"]) == 0
    out = capsys.readouterr().out
    assert "preset paper" in out and "bans=none" in out and "uneven_steps=refuse" in out and "block_length=4" in out
    assert main(base + ["--preset", "papr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Did you mean 'paper'" in err[0]
