"""The shared sampling math (strategies/sampling.py) against plain-Python references on random inputs."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from refinery.strategies.sampling import (NEG_INF, ban_tokens, banned_ids, gumbel_argmax, log_probability_from_top,
                                 nucleus_filter, passes_for_budget, planned_passes, predict, probability_from_top,
                                 select_topk, split_evenly, token_probability, transfer_counts, uniform_rand)


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def random_logits(B: int = 3, L: int = 5, V: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, L, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_predict_is_the_argmax_and_its_softmax_probability():
    logits = random_logits()
    tokens, conf = predict(logits.clone(), 0.0, gens(0, 1, 2))
    probs = logits.double().softmax(-1)
    assert torch.equal(tokens, logits.argmax(-1))
    assert torch.allclose(conf.double(), probs.max(-1).values, atol=1e-6)
    assert torch.equal(gumbel_argmax(logits, 0.0, gens(0, 1, 2)), logits.argmax(-1))


def test_sampled_tokens_follow_the_softmax_and_each_row_its_own_stream():
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]]).expand(1, 4000, 4).contiguous()
    draws = gumbel_argmax(logits, 1.0, gens(7))[0]
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert torch.allclose(freq, logits[0, 0].double().softmax(-1), atol=0.03)  # 4000 draws: sd < 0.008
    hot = gumbel_argmax(logits[:, :400], 0.05, gens(7))[0]  # a low temperature is nearly greedy
    assert (hot == 0).float().mean() > 0.99
    batch = random_logits(B=2, L=50, V=7, seed=3)
    together = gumbel_argmax(batch, 1.0, gens(11, 12))
    assert torch.equal(together[1], gumbel_argmax(batch[1:], 1.0, gens(12))[0])  # independent of the batch
    assert torch.equal(together, gumbel_argmax(batch, 1.0, gens(11, 12)))  # same seeds, same draws
    tokens, conf = predict(batch.clone(), 1.0, gens(11, 12))
    assert torch.equal(tokens, together)
    assert torch.allclose(conf, batch.softmax(-1).gather(-1, tokens[..., None])[..., 0], atol=1e-6)


def test_uniform_rand_draws_row_b_from_generator_b():
    u = uniform_rand((2, 3, 4), gens(5, 6), "cpu")
    assert u.shape == (2, 3, 4) and bool(((u >= 0) & (u < 1)).all())
    assert torch.equal(u[1], torch.rand((3, 4), generator=torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match="1 generators for a batch of 2"):
        uniform_rand((2, 3), gens(5), "cpu")


def test_probabilities_of_given_tokens_match_the_softmax():
    logits = random_logits(seed=4)
    tokens = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(1))
    want = logits.double().softmax(-1).gather(-1, tokens[..., None])[..., 0]
    assert torch.allclose(token_probability(logits, tokens).double(), want, atol=1e-6)
    top, top_prob = predict(logits.clone(), 0.0, gens(0, 0, 0))
    assert torch.allclose(probability_from_top(logits, tokens, top, top_prob).double(), want, atol=1e-6)
    assert torch.allclose(log_probability_from_top(logits, tokens, top, top_prob).double(), want.log(), atol=1e-5)
    far = logits.clone()
    far[..., 0] = -200.0  # e^-200 underflows float32 as a probability but not as a log-probability
    ftop, fprob = predict(far.clone(), 0.0, gens(0, 0, 0))
    zeros = torch.zeros_like(tokens)
    logp = log_probability_from_top(far, zeros, ftop, fprob)
    assert bool(torch.isfinite(logp).all()) and bool((logp < -150).all())


def test_ban_tokens_sets_minus_infinity_in_place_and_skips_none():
    logits = random_logits()
    out = ban_tokens(logits, (3, None, 7))
    assert out is logits
    assert bool((logits[..., 3] == NEG_INF).all()) and bool((logits[..., 7] == NEG_INF).all())
    assert bool(torch.isfinite(logits[..., [0, 1, 2, 4, 5, 6, 8, 9, 10]]).all())
    assert banned_ids("mask+delete", 9, 8) == (9, 8) and banned_ids("mask", 9, 8) == (9,)
    assert banned_ids("none", 9, 8) == ()
    with pytest.raises(ValueError, match="bans='all'"):
        banned_ids("all", 9, 8)


def test_split_evenly_and_uniform_transfer_counts_front_load_the_remainder():
    assert split_evenly(10, 4) == [3, 3, 2, 2] and split_evenly(3, 5) == [1, 1, 1, 0, 0]
    masks = torch.tensor([10, 3, 0, 7])
    counts = transfer_counts(masks, 4)
    assert counts.tolist() == [split_evenly(int(m), 4) for m in masks]


@pytest.mark.parametrize("per_pass", [1, 2, 5])
def test_transfer_counts_with_k_per_pass_follow_the_reference(per_pass):
    masks = torch.tensor([0, 1, 7, 12, 30])
    steps = 6
    counts = transfer_counts(masks, steps, per_pass)
    for b, m in enumerate(masks.tolist()):
        want, left = [], m
        for j in range(steps):  # at least k, at least what finishing in time needs, at most what is left
            c = min(max(math.ceil(left / (steps - j)), per_pass), left)
            want.append(c)
            left -= c
        assert counts[b].tolist() == want and sum(want) == m


def test_planned_passes_is_the_last_pass_that_commits_anything():
    assert planned_passes(torch.tensor([[2, 1, 0, 0], [1, 1, 1, 0]])) == 3
    assert planned_passes(torch.tensor([[0, 0], [0, 0]])) == 0
    assert planned_passes(torch.tensor([[0, 0, 4]])) == 3


def test_select_topk_matches_a_stable_reference_and_never_takes_minus_infinity():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        scores = torch.randint(0, 4, (4, 9), generator=g).float()  # many exact ties
        scores[torch.rand(4, 9, generator=g) < 0.2] = NEG_INF
        k = torch.randint(0, 11, (4,), generator=g)
        got = select_topk(scores, k)
        for b in range(4):
            order = sorted(range(9), key=lambda i: (-scores[b, i].item(), i))  # ties: the lower index first
            want = {i for i in order[: int(k[b])] if math.isfinite(scores[b, i].item())}
            assert set(torch.nonzero(got[b]).flatten().tolist()) == want


def test_passes_for_budget_is_the_ceiling_and_at_least_one():
    assert passes_for_budget(Fraction(1, 8), 64) == 8
    assert passes_for_budget(Fraction(1, 3), 10) == 4
    assert passes_for_budget(Fraction(1, 3), 9) == 3  # exact: no float rounding up to 4
    assert passes_for_budget(Fraction(1, 100), 8) == 1


def test_nucleus_filter_keeps_the_tokens_before_the_crossing_one():
    logits = torch.tensor([[[math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]]])
    kept = torch.isfinite(nucleus_filter(logits.clone(), 0.9))[0, 0].tolist()
    assert kept == [True, True, False, False]  # 0.5 + 0.3 <= 0.9; 0.95 crosses: that token is dropped
    assert torch.isfinite(nucleus_filter(logits.clone(), 0.1))[0, 0].tolist() == [True, False, False, False]
    same = logits.clone()
    assert nucleus_filter(same, 1.0) is same and bool(torch.isfinite(same).all())
    rand = random_logits(seed=9)
    filtered = nucleus_filter(rand.clone(), 0.7)
    probs = rand.softmax(-1)
    for b in range(3):
        for p in range(5):
            order = probs[b, p].argsort(descending=True).tolist()
            cum, want = 0.0, set()
            for rank, t in enumerate(order):
                cum += probs[b, p, t].item()
                if cum <= 0.7 or rank == 0:
                    want.add(t)
            assert set(torch.nonzero(torch.isfinite(filtered[b, p])).flatten().tolist()) == want
