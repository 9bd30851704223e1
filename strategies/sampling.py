"""Sampling math shared by every strategy: Gumbel-max, confidences, transfer-count schedules, top-k.

Imported, never copied: a second copy of any of this is how decode loops drift apart.
"""

from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")


def gumbel_argmax(logits: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> torch.Tensor:
    """Sample argmax(logits / T + Gumbel) in float64; T = 0 is plain argmax.

    LLaDA writes this as argmax(exp(logits) / (-log u)^T); taking logs gives logits + T * g with g
    Gumbel, the same argmax without overflow. Float64 because low-precision Gumbel noise measurably
    degrades masked-diffusion samples (Zheng et al., 2024, arXiv:2409.02908).
    logits (B, ..., V) -> (B, ...) int64; row b draws from ``generators[b]``."""
    if temperature == 0:
        return logits.argmax(-1)
    u = uniform_rand(logits.shape, generators, logits.device, torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() + temperature * gumbel).argmax(-1)


def predict(logits: torch.Tensor, temperature: float, generators: list,
            where: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted tokens and their softmax probability (LLaDA's confidence). (B, L, V) -> (B, L), (B, L).

    Greedy decoding takes the fused one-read kernel on GPU; sampling draws Gumbel noise first.
    ``where`` (B, L) bool marks the positions the caller will read; elsewhere the values are unspecified
    (the GPU kernel skips them)."""
    if temperature == 0:
        from refinery.strategies.kernels import argmax_probability

        return argmax_probability(logits, where)
    x0 = gumbel_argmax(logits, temperature, generators)
    return x0, token_probability(logits, x0)


def token_probability(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[tokens] in float32 without materialising the softmax. (B, L, V), (B, L) -> (B, L).

    Sampled tokens only: float32 keeps the temporary at half the size of a float64 one (16 GB at B=32,
    L=512, V=126464); greedy confidences come from the float64 kernel."""
    chosen = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).float()
    return torch.exp(chosen - torch.logsumexp(logits.float(), dim=-1))


def probability_from_top(logits: torch.Tensor, tokens: torch.Tensor, top: torch.Tensor,
                         top_prob: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[tokens] from ``predict``'s greedy output (the argmax ``top`` and its probability):
    p(t) = p(top) * exp(l_t - l_top), two gathers instead of another pass over the vocabulary.
    (B, L, V), (B, L), (B, L), (B, L) -> (B, L) in ``top_prob``'s dtype."""
    return top_prob * torch.exp(_gap_to_top(logits, tokens, top).to(top_prob.dtype))


def log_probability_from_top(logits: torch.Tensor, tokens: torch.Tensor, top: torch.Tensor,
                             top_prob: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens], the same way as :func:`probability_from_top` but without underflow:
    log p(top) + l_t - l_top. -> (B, L) float32."""
    return top_prob.float().clamp_min(1e-30).log() + _gap_to_top(logits, tokens, top).float()


def _gap_to_top(logits: torch.Tensor, tokens: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """l_t - l_top per position: (B, L, V), (B, L), (B, L) -> (B, L) in the logits' dtype."""
    return (logits.gather(-1, tokens.unsqueeze(-1)) - logits.gather(-1, top.unsqueeze(-1))).squeeze(-1)


def uniform_rand(shape, generators: list[torch.Generator], device, dtype=torch.float32) -> torch.Tensor:
    """U(0, 1) of ``shape`` (B, ...), row b drawn from its own generator ``generators[b]``.

    One stream per row makes a row's result depend only on its prompt and the seed, not on which
    other rows share the batch: padded batches decode exactly like single rows, sampling included."""
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    return torch.stack([torch.rand(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generators])


def ban_tokens(logits: torch.Tensor, token_ids) -> torch.Tensor:
    """Set the logits of ``token_ids`` (None entries skipped) to -inf, in place; returns ``logits``."""
    for t in token_ids:  # basic indexing: a strided fill, no index tensor copied to the device
        if t is not None:
            logits[..., int(t)] = NEG_INF
    return logits


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` items over ``parts`` slots, the first ones taking the remainder: 10, 4 -> [3, 3, 2, 2]."""
    base, rem = divmod(total, parts)
    return [base + (i < rem) for i in range(parts)]


def transfer_counts(mask_counts: torch.Tensor, steps: int, per_pass: int | None = None) -> torch.Tensor:
    """How many masked positions each row commits at each of ``steps`` passes. (B,) -> (B, steps) int64.

    Uniform (LLaDA, linear schedule): ``mask_count // steps`` each, the remainder spread over the first
    passes. With ``per_pass`` = k: commit k per pass, but never fewer than needed to finish in time
    (ceil(remaining / passes left)), and never more than remain."""
    B = mask_counts.shape[0]
    if per_pass is None:
        base = mask_counts // steps
        rem = mask_counts % steps
        return base[:, None] + (torch.arange(steps, device=mask_counts.device)[None, :] < rem[:, None]).long()
    out = torch.zeros(B, steps, dtype=torch.long, device=mask_counts.device)
    remaining = mask_counts.clone()
    for j in range(steps):
        need = -(-remaining // (steps - j))  # ceil
        c = torch.minimum(torch.maximum(need, torch.full_like(need, per_pass)), remaining)
        out[:, j] = c
        remaining -= c
    return out


def planned_passes(counts: torch.Tensor) -> int:
    """Passes up to the last one that commits anything in some row. (B, S) counts -> int (one host sync)."""
    used = (counts.sum(0) > 0).nonzero()
    return int(used.max()) + 1 if len(used) else 0


def select_topk(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Per-row top-k: a (B, L) bool mask of the ``k[b]`` highest-scoring positions of each row.

    Positions scored -inf are never selected, even when ``k`` asks for more. Exact ties break toward the
    lower index (a stable descending sort; torch.topk is not stable on CPU or CUDA). A full sort of L
    scores costs microseconds and, unlike topk, needs no host-side ``k.max()``: no sync on the hot path."""
    L = scores.shape[-1]
    vals, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
    keep = (torch.arange(L, device=scores.device)[None, :] < k[:, None]) & torch.isfinite(vals)
    out = torch.zeros_like(scores, dtype=torch.bool)
    out.scatter_(1, idx, keep)
    return out


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def passes_for_budget(budget_fraction, gen_length: int) -> int:
    """Forward passes a row may use: ceil(budget * L) (exact for Fractions)."""
    return max(1, math.ceil(budget_fraction * gen_length))


BANS = ("mask+delete", "mask", "none")  # the choices of a strategy's ``bans`` parameter


def banned_ids(bans: str, mask_id: int, delete_id: int | None) -> tuple:
    """The token ids a strategy never predicts. "mask+delete": the project's rule (neither the mask nor an
    edit model's delete token is a word); "mask": MDLM/ReMDM's SUBS parameterisation (mask logit -inf);
    "none": LLaDA and Fast-dLLM, which let a predicted mask id through (it stays a mask)."""
    if bans not in BANS:
        raise ValueError(f"bans={bans!r} is not one of {list(BANS)}")
    return {"mask+delete": (mask_id, delete_id), "mask": (mask_id,), "none": ()}[bans]


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """ReMDM's nucleus rule, in place: keep the most probable tokens whose cumulative probability (the
    token's own included) stays <= ``top_p``, always the most probable one; the rest get -inf, so a softmax
    over the result is the renormalised nucleus. Note the cut: the token that crosses ``top_p`` is dropped
    (HF's top-p keeps it). (B, L, V) -> the same tensor."""
    if top_p >= 1.0:
        return logits
    probs, order = logits.float().softmax(-1).sort(-1, descending=True)
    keep = probs.cumsum(-1) <= top_p
    keep[..., 0] = True
    drop = torch.zeros_like(keep).scatter_(-1, order, ~keep)
    return logits.masked_fill_(drop, NEG_INF)
