"""The fused argmax/probability path against a float64 softmax (CPU path here; the GPU kernel is checked
against the same reference by tests/benchmarks/gpu_decode.py on the device)."""

import torch

from strategies.kernels import argmax_probability


def test_argmax_probability_matches_float64_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 4
    logits[..., 5] = float("-inf")
    idx, prob = argmax_probability(logits)
    ref = torch.softmax(logits.double(), -1)
    assert torch.equal(idx, ref.argmax(-1))
    assert torch.allclose(prob.double(), ref.max(-1).values, rtol=1e-5)
    assert prob.dtype == torch.float32 and idx.dtype == torch.long
