"""R2FT, rejective fine-tuning (Seo et al., 2025, "Fast and fluent diffusion language models via
convolutional decoding and rejective fine-tuning").

Masked diffusion LMs decoded with few passes tend to repeat recent context. R2FT shows the model a
*suffix-masked* answer and prefers the true suffix (winner) over a rule-made repetitive one (loser):
the loser tiles the last n tokens before the suffix across the whole suffix, n drawn from
``repeat_ns``. Both are scored from the same masked input, so one forward pass serves both:

    LP_w = log p(winner suffix | masked input),  LP_l = log p(loser suffix | masked input)
    loss = -log sigmoid(beta_w * LP_w - beta_l * LP_l - gamma) - beta_a * LP_w

(``lp_reduction`` "mean" averages the per-token log-probs over the suffix, "sum" adds them.) The suffix
covers a fraction U(min_suffix_frac, 1) of the eos-padded response; the prompt is never masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.train.config import TrainConfig
from core.train.data import ChatBatch
from core.train.objectives import LossOutput


def suffix_and_loser(batch: ChatBatch, frac: torch.Tensor, ns: torch.Tensor):
    """suffix (B, T) bool: the masked suffix of each padded response; loser (B, T): the winner's ids with
    the suffix replaced by the last n[b] tokens before it, tiled. frac (B,) in (0, 1]; ns (B,) >= 1."""
    ids = batch.input_ids
    B, T = ids.shape
    P = batch.prompt_len
    R = batch.response_mask.sum(1)
    start = P + torch.minimum((R.float() * (1 - frac)).floor().long(), R - 1)  # at least one suffix token
    pos = torch.arange(T, device=ids.device)[None, :]
    suffix = (pos >= start[:, None]) & batch.response_mask
    n = torch.minimum(ns.to(ids.device), start)  # never reach before the first token
    src = start[:, None] - n[:, None] + (pos - start[:, None]).clamp(min=0) % n[:, None]
    loser = torch.where(suffix, ids.gather(1, src.clamp(0, T - 1)), ids)
    return suffix, loser


def suffix_logprob(logp: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, B: int, mean: bool) -> torch.Tensor:
    """Per-row log-prob of ``targets`` (M,) under ``logp`` (M, V); ``rows`` (M,) row of each position."""
    tok = logp.gather(1, targets[:, None]).squeeze(1)
    out = torch.zeros(B, device=logp.device, dtype=logp.dtype).index_add_(0, rows, tok)
    if mean:
        out = out / torch.bincount(rows, minlength=B).clamp(min=1).to(out.dtype)
    return out


class R2FTObjective:
    kind = "chat"

    def __init__(self, cfg: TrainConfig, special: dict):
        self.cfg, self.mask_id = cfg, special["mask_token_id"]

    def loss(self, model, batch: ChatBatch, gen: torch.Generator, step: int) -> LossOutput:
        r = self.cfg.r2ft
        B = batch.input_ids.shape[0]
        frac = r.min_suffix_frac + (1 - r.min_suffix_frac) * torch.rand(B, generator=gen)
        ns = torch.tensor(r.repeat_ns)[torch.randint(len(r.repeat_ns), (B,), generator=gen)]
        suffix, loser = suffix_and_loser(batch, frac.to(batch.input_ids.device), ns)
        xt = torch.where(suffix, torch.full_like(batch.input_ids, self.mask_id), batch.input_ids)
        out = model(xt, attention_mask=batch.attention_mask, compute_next=False)
        logp = F.log_softmax(out.logits[suffix].float(), dim=-1)  # (M, V): only the suffix positions
        rows = suffix.nonzero()[:, 0]
        mean = r.lp_reduction == "mean"
        lp_w = suffix_logprob(logp, batch.input_ids[suffix], rows, B, mean)
        lp_l = suffix_logprob(logp, loser[suffix], rows, B, mean)
        pref = -F.logsigmoid(r.beta_w * lp_w - r.beta_l * lp_l - r.gamma)
        loss = (pref - r.beta_a * lp_w).mean()
        metrics = {"lp_w": lp_w.mean().item(), "lp_l": lp_l.mean().item(), "loss_pref": pref.mean().item(),
                   "suffix_tokens": float(suffix.sum())}
        return LossOutput(loss, metrics, int(batch.attention_mask.sum()))
