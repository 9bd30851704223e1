"""Masked-diffusion objectives of Stage 1 (pretraining) and Stage 2 (SFT), and what every objective returns.

LLaDA's estimator (Nie et al., 2025, Eq. 3 / Eq. 5): draw t ~ U(min_t, max_t) per sequence, mask each
eligible token with probability t, and weight the cross-entropy of every masked token by 1/t:

    L = E_b [ sum_{i masked} -log p(x0_i | x_t) / t_b ] / D

with D, the ``normalize`` option: ``"tokens"`` divides row b by its number of eligible tokens (pretraining:
seq_len; SFT: the eos-padded response length, LLaDA's SFT normalisation) and averages rows; ``"masked"``
divides the batch sum by the number of masked tokens (lower variance, no longer the ELBO's scale).

``t_sampling: micro_batch`` draws one t for the whole micro-batch (ME-DLM); with ``normalize: masked`` the
loss is then ME-DLM's: mean CE over the masked tokens / t. ``mask_first_response_token: false`` keeps the
first answer token visible in chat stages, as ME-DLM does (the project masks it: the gap-0 fix below).

The ME-DLM next-token head, when the model has one, is trained alongside with the same weights and
normaliser: next_logits[b, i] predicts x0[b, i+1], counted where position i+1 is masked (so it learns to
fill the gap after i from context; on unmasked successors the target is visible and teaches nothing).
For a chat row the gap after the last prompt token therefore predicts the first response token, which
is exactly where ME-DLM reads its gap-0 insertion. A packed chunk's last position has no successor and
is skipped; documents still end in eos inside the stream, so the head sees eos targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from core.fused import head_weight, linear_cross_entropy, uses_fused_ce
from core.train.config import ObjectiveSection, TrainConfig
from core.train.data import ChatBatch


@dataclass
class LossOutput:
    """loss: scalar to backpropagate; metrics: floats for logging (per head, ...); tokens: tokens processed."""

    loss: torch.Tensor
    metrics: dict = field(default_factory=dict)
    tokens: int = 0


def sample_mask(eligible: torch.Tensor, min_t: float, max_t: float, gen: torch.Generator, shared_t: bool = False):
    """eligible (B, L) bool -> masked (B, L) bool, t (B,) float32. Random numbers come from the CPU generator
    ``gen`` whatever the device, so runs and resumes are reproducible on any hardware. ``shared_t``: one t
    for every row (drawn first, then the (B, L) uniforms, as in the per-row case)."""
    B, L = eligible.shape
    t = min_t + (max_t - min_t) * torch.rand(1 if shared_t else B, generator=gen)
    t = t.expand(B)
    u = torch.rand(B, L, generator=gen)
    masked = (u < t[:, None]).to(eligible.device) & eligible
    return masked, t.to(eligible.device)


def has_next_head(model) -> bool:
    return getattr(model, "next_token_head", None) is not None


def weighted_ce(logits: torch.Tensor, targets: torch.Tensor, where: torch.Tensor, weight: torch.Tensor,
                denom: torch.Tensor, normalize: str) -> torch.Tensor:
    """sum over ``where`` of CE * weight, normalised per row by ``denom`` then averaged ("tokens"), or divided
    by the number of counted positions ("masked"). logits (B, L, V); targets, where, weight (B, L); denom (B,)."""
    ce = F.cross_entropy(logits[where].float(), targets[where], reduction="none")
    return reduce_ce(ce, where, weight, denom, normalize)


def weighted_linear_ce(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, where: torch.Tensor,
                       weight: torch.Tensor, denom: torch.Tensor, normalize: str) -> torch.Tensor:
    """:func:`weighted_ce` of the logits ``hidden @ head.T`` without building them: hidden (B, L, D), head (V, D);
    only the counted rows are projected, through the fused linear cross-entropy where it runs."""
    ce = linear_cross_entropy(hidden[where], head, targets[where], fused=True)
    return reduce_ce(ce, where, weight, denom, normalize)


def reduce_ce(ce: torch.Tensor, where: torch.Tensor, weight: torch.Tensor, denom: torch.Tensor,
              normalize: str) -> torch.Tensor:
    """ce (N,): the CE of the N positions where ``where`` (B, L) holds, in row-major order -> the scalar loss."""
    ce = ce * weight[where]
    if normalize == "masked":
        return ce.sum() / where.sum().clamp(min=1)
    rows = torch.zeros(where.shape[0], device=ce.device, dtype=ce.dtype).index_add_(0, where.nonzero()[:, 0], ce)
    return (rows / denom.clamp(min=1)).mean()


def masked_diffusion_loss(model, x0: torch.Tensor, eligible: torch.Tensor, attention_mask: Optional[torch.Tensor],
                          obj: ObjectiveSection, mask_id: int, gen: torch.Generator) -> LossOutput:
    """One LLaDA training loss on clean ids x0 (B, L); only ``eligible`` (B, L) positions may be masked."""
    masked, t = sample_mask(eligible, obj.min_t, obj.max_t, gen, shared_t=obj.t_sampling == "micro_batch")
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    use_next = has_next_head(model) and obj.next_head_weight > 0
    fused = uses_fused_ce(model)  # the heads' logits are never built: CE straight from the hidden states
    out = model(xt, attention_mask=attention_mask, compute_next=use_next, compute_logits=not fused)
    weight = (1.0 / t)[:, None].expand_as(masked)
    denom = eligible.sum(1)

    def head_ce(logits, head: str, targets, where):
        if fused:
            return weighted_linear_ce(out.hidden_states, head_weight(model, head), targets, where, weight, denom,
                                      obj.normalize)
        return weighted_ce(logits, targets, where, weight, denom, obj.normalize)

    cur = head_ce(out.logits, "lm_head", x0, masked)
    metrics = {"loss_cur": cur.item(), "mask_frac": (masked.sum() / eligible.sum().clamp(min=1)).item()}
    loss = cur
    if use_next:
        nxt_where = torch.zeros_like(masked)
        nxt_where[:, :-1] = masked[:, 1:]
        nxt_targets = torch.zeros_like(x0)
        nxt_targets[:, :-1] = x0[:, 1:]
        nxt = head_ce(out.next_logits, "next_token_head", nxt_targets, nxt_where)
        loss = loss + obj.next_head_weight * nxt
        metrics["loss_next"] = nxt.item()
    n_tok = int(eligible.numel() if attention_mask is None else attention_mask.sum())
    return LossOutput(loss, metrics, n_tok)


class PretrainObjective:
    """Stage 1 on packed chunks (B, L): every position may be masked; optional random-length crops."""

    kind = "pretrain"

    def __init__(self, cfg: TrainConfig, special: dict):
        self.cfg, self.mask_id = cfg, special["mask_token_id"]

    def loss(self, model, batch: torch.Tensor, gen: torch.Generator, step: int) -> LossOutput:
        x0 = batch
        # LLaDA trains 1% of batches at a random length so that short inputs are not out of distribution.
        crop = torch.rand(2, generator=gen)
        if crop[0].item() < self.cfg.data.random_length_prob:
            x0 = x0[:, : 1 + int(crop[1].item() * x0.shape[1])]
        eligible = torch.ones_like(x0, dtype=torch.bool)
        return masked_diffusion_loss(model, x0, eligible, None, self.cfg.objective, self.mask_id, gen)


class SFTObjective:
    """Stage 2: the prompt is never masked; the eos-padded response is the diffusion target."""

    kind = "chat"

    def __init__(self, cfg: TrainConfig, special: dict):
        self.cfg, self.mask_id = cfg, special["mask_token_id"]

    def loss(self, model, batch: ChatBatch, gen: torch.Generator, step: int) -> LossOutput:
        eligible = chat_eligible(batch, self.cfg.objective.mask_first_response_token)
        return masked_diffusion_loss(model, batch.input_ids, eligible, batch.attention_mask,
                                     self.cfg.objective, self.mask_id, gen)


def chat_eligible(batch: ChatBatch, mask_first: bool) -> torch.Tensor:
    """(B, T) bool: the positions a chat stage may mask - the eos-padded response, without its first token
    when ``mask_first`` is off (ME-DLM never masks it)."""
    if mask_first:
        return batch.response_mask
    first = torch.zeros_like(batch.response_mask)
    first[torch.arange(first.shape[0], device=first.device), batch.prompt_len.to(first.device)] = True
    return batch.response_mask & ~first
