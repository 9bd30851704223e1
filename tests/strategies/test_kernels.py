"""The fused argmax/probability path against a float64 softmax (CPU path here; the GPU kernel is checked
against the same reference by tests/benchmarks/gpu_decode.py on the device)."""

import torch

from refinery.strategies.kernels import argmax_probability


def test_argmax_probability_matches_float64_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 4
    logits[..., 5] = float("-inf")
    idx, prob = argmax_probability(logits)
    ref = torch.softmax(logits.double(), -1)
    assert torch.equal(idx, ref.argmax(-1))
    assert torch.allclose(prob, ref.max(-1).values, rtol=1e-12)
    assert prob.dtype == torch.float64 and idx.dtype == torch.long


def test_argmax_probability_reads_strided_views():
    g = torch.Generator().manual_seed(1)
    full = torch.randn(2, 9, 40, generator=g)
    idx, prob = argmax_probability(full[:, 1:])  # the loop's slice of the model output
    ref_idx, ref_prob = argmax_probability(full[:, 1:].contiguous())
    assert torch.equal(idx, ref_idx) and torch.equal(prob, ref_prob)


def test_probability_from_top_matches_the_softmax():
    from refinery.strategies.sampling import predict, probability_from_top

    g = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(3, 7, 50, generator=g)
    logits[0, 0, 5] = float("-inf")  # a banned token has probability 0
    tokens = torch.randint(0, 50, (3, 7), generator=g)
    tokens[0, 0] = 5
    top, prob = predict(logits, 0.0, [])
    want = torch.softmax(logits.double(), -1).gather(-1, tokens[..., None])[..., 0]
    got = probability_from_top(logits, tokens, top, prob)
    assert got.dtype == torch.float64 and got[0, 0] == 0
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
