"""A fused GPU kernel for the one reduction every pass needs: argmax and its softmax probability.

Reading (B, L, V) bf16 logits once is the floor for a pass's bookkeeping (4 GB at B=32, L=512,
V=126464: ~1.4 ms on an H100, ~1-2% of a 1B model's pass). The plain torch version upcasts and
reduces twice (max, then logsumexp): three times the traffic. This Triton kernel keeps a running
max, argmax and rescaled sum of exponentials per row in one read, and reads strided (B, L, V) views
in place (the loop's logits are a slice of the model output; a copy would double the traffic).

The probability is returned in float64, like LLaDA's published sampler (``softmax(logits.to(float64))``):
exponentials are taken in float32 (float64 ones took 10.7 ms instead of 2.5 ms on an H100) and summed in
float64. Before this, a float32 sum and float32 output let neighbouring confidences at a top-k boundary
swap order against the reference, so greedy decoding committed different positions. What remains is
the float32 exponent's rounding (~1e-7 per term, averaging out over the vocabulary). CPU tensors (and
machines without Triton) take the torch path, which the tests compare against.
"""

from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch only
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU wheels
    triton = None


def argmax_probability_torch(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) -> argmax (...) int64, softmax probability of the argmax (...) float64."""
    x0 = logits.argmax(-1)
    top = logits.gather(-1, x0[..., None])[..., 0].double()
    return x0, torch.exp(top - torch.logsumexp(logits.double(), dim=-1))


if triton is not None:

    @triton.jit
    def _argmax_prob_kernel(x_ptr, keep_ptr, idx_ptr, prob_ptr, L, V, stride_b, stride_l, BLOCK: tl.constexpr,
                            ACC: tl.constexpr, HAS_KEEP: tl.constexpr):
        row = tl.program_id(0)
        stop = V
        if HAS_KEEP:  # positions nobody asked about read nothing (the loop below runs zero times)
            stop = V * tl.load(keep_ptr + row).to(tl.int32)
        base = x_ptr + (row // L).to(tl.int64) * stride_b + (row % L).to(tl.int64) * stride_l
        offs = tl.arange(0, BLOCK)
        m = tl.full([BLOCK], float("-inf"), tl.float32)  # running max per lane (exact: bf16 values)
        s = tl.zeros([BLOCK], ACC)  # running sum of exp(x - m) per lane, accumulated in float64
        arg = tl.zeros([BLOCK], tl.int32)  # index of each lane's max (first occurrence)
        for start in range(0, stop, BLOCK):
            cols = start + offs
            x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            new_m = tl.maximum(m, x)
            # lanes where m is still -inf contribute nothing yet; avoid inf - inf
            scale = tl.where(new_m == float("-inf"), 0.0, tl.exp(m - new_m))
            term = tl.where(x == float("-inf"), 0.0, tl.exp(x - new_m))
            s = s * scale.to(ACC) + term.to(ACC)
            arg = tl.where(x > m, cols, arg)
            m = new_m
        row_max = tl.max(m, 0)
        lane_scale = tl.where(m == float("-inf"), 0.0, tl.exp(m - row_max))
        total = tl.sum(s * lane_scale.to(ACC), 0).to(tl.float64)
        # first index reaching the row max (torch.argmax's tie rule)
        cand = tl.where(m == row_max, arg, V)
        best = tl.min(cand, 0)
        tl.store(idx_ptr + row, best.to(tl.int64))
        tl.store(prob_ptr + row, tl.where(total > 0, 1.0 / total, 0.0))


LAUNCH = dict(BLOCK=2048, num_warps=8)  # measured on an H100 by tests/benchmarks/kernel_tune.py


def argmax_probability(logits: torch.Tensor, where: torch.Tensor | None = None,
                       launch: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused on CUDA (one read of the logits), torch elsewhere. (..., V) -> (...) int64, (...) float64.

    ``where`` (...) bool: only these positions are needed. The kernel skips the others' logits (index 0,
    probability 0 there), which halves the read over a generation; the torch path computes them all."""
    if triton is None or not logits.is_cuda:
        return argmax_probability_torch(logits)
    shape, V = logits.shape[:-1], logits.shape[-1]
    x = logits if logits.dim() == 3 else logits.reshape(-1, 1, V)
    if x.stride(-1) != 1:
        x = x.contiguous()
    B, L = x.shape[0], x.shape[1]
    idx = torch.empty(B * L, dtype=torch.long, device=logits.device)
    prob = torch.empty(B * L, dtype=torch.float64, device=logits.device)
    if B * L:
        opts = {"ACC": tl.float64, **LAUNCH, **(launch or {})}
        keep = idx if where is None else where.reshape(-1).contiguous()  # any pointer when unused
        _argmax_prob_kernel[(B * L,)](x, keep, idx, prob, L, V, x.stride(0), x.stride(1), HAS_KEEP=where is not None,
                                      **opts)
    return idx.view(shape), prob.view(shape)
