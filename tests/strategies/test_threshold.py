"""Hand-built cases for Fast-dLLM threshold decoding."""

from __future__ import annotations

import pytest
import torch

from tiny_models import VOCAB
from refinery.core.decode import generate
from refinery.strategies import get_strategy


def probs_script(peaks, prompt_len=1):
    """Generation position i predicts token 10+i with probability ~peaks[i] (softmax over a flat rest)."""

    def fn(ids):
        B, W = ids.shape
        logits = torch.zeros(B, W, VOCAB)
        for i, p in enumerate(peaks):
            # choose the logit so that softmax gives p against VOCAB-1 zeros
            logits[:, prompt_len + i, 10 + i] = torch.log(torch.tensor(p * (VOCAB - 1) / (1 - p)))
        return logits, None

    return fn


def test_commits_everything_above_threshold_in_one_pass_and_finishes_early(scripted):
    model = scripted(probs_script([0.95, 0.2, 0.97, 0.99, 0.3, 0.96]))
    res = generate(model, [[3]], 6, get_strategy("threshold", threshold=0.9), "1/1")
    passes = [sorted(torch.nonzero(r.unmasked[0]).flatten().tolist()) for r in res.trace.records]
    assert passes[0] == [0, 2, 3, 5]
    assert passes[1] == [4] and passes[2] == [1]  # below threshold: one at a time, most confident first
    assert res.nfe.tolist() == [3] and res.max_nfe == 6


def test_at_least_enough_per_pass_to_meet_the_budget(scripted):
    model = scripted(probs_script([0.1] * 8))
    res = generate(model, [[3]], 8, get_strategy("threshold", threshold=0.9), "1/4")  # 2 passes
    assert [int(r.unmasked.sum()) for r in res.trace.records] == [4, 4]


def test_blocks_are_decoded_in_order_with_carry_over(scripted):
    model = scripted(probs_script([0.99] * 4 + [0.1] * 4))
    res = generate(model, [[3]], 8, get_strategy("threshold", threshold=0.9, block_length=4), "1/2")  # 4 passes
    passes = [sorted(torch.nonzero(r.unmasked[0]).flatten().tolist()) for r in res.trace.records]
    assert passes[0] == [0, 1, 2, 3]  # block 0 done in one pass; its spare pass carries over
    assert all(min(p) >= 4 for p in passes[1:])
    assert res.nfe.tolist() == [4] and [len(p) for p in passes[1:]] == [2, 1, 1]


def test_threshold_validation():
    with pytest.raises(ValueError, match="threshold"):
        get_strategy("threshold", threshold=1.5).config.check(8, 8)
    with pytest.raises(ValueError, match=r"^block_length=3 must divide gen_length=8$"):
        get_strategy("threshold", block_length=3).config.check(8, 8)
    get_strategy("threshold", block_length=4).config.check(8, 8)  # divides: no error
