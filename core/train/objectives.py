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

from refinery.core.fused import head_weight, linear_cross_entropy, uses_fused_ce
from refinery.core.train.config import ObjectiveSection, TrainConfig
from refinery.core.train.data import ChatBatch, to_device


@dataclass
class LossOutput:
    """loss: scalar to backpropagate; metrics: for logging (per head, ...), Python floats or 0-dim tensors that
    the trainer reads once per optimiser step (a device scalar read here would stall the host mid-step);
    tokens: tokens processed."""

    loss: torch.Tensor
    metrics: dict = field(default_factory=dict)
    tokens: int = 0


def sample_mask(eligible: torch.Tensor, min_t: float, max_t: float, gen: torch.Generator, shared_t: bool = False):
    """eligible (B, L) bool -> masked (B, L) bool, t (B,) float32, on eligible's device. Random numbers come from
    the CPU generator ``gen`` whatever the device, so runs and resumes are reproducible on any hardware. The
    trainer passes a CPU ``eligible``: the mask is then known on the host, and the rows to score are found
    there without a device sync. ``shared_t``: one t for every row (drawn first, then the (B, L) uniforms)."""
    B, L = eligible.shape
    t = min_t + (max_t - min_t) * torch.rand(1 if shared_t else B, generator=gen)
    t = t.expand(B)
    u = torch.rand(B, L, generator=gen)
    masked = (u < t[:, None]).to(eligible.device) & eligible
    return masked, t.to(eligible.device)


@dataclass
class Selection:
    """The N positions of a (B, L) mask, found on the host: flat (N,) int64 indices into the flattened (B * L)
    in row-major order (the order of boolean indexing), rows (N,) their rows, count a 0-dim int64 max(N, 1),
    all on the compute device. Gathering with known indices needs no device sync, where ``x[mask]`` on a
    device mask waits for the GPU to count the mask before it can size its output."""

    flat: torch.Tensor
    rows: torch.Tensor
    count: torch.Tensor
    batch: int

    @classmethod
    def of(cls, where: torch.Tensor, device) -> "Selection":
        """``where`` (B, L) bool, preferably on the CPU (a device mask costs one copy back, and a sync)."""
        where = where.cpu()
        flat = where.flatten().nonzero().squeeze(1)
        rows = torch.div(flat, where.shape[1], rounding_mode="floor")
        count = torch.tensor(flat.numel(), dtype=torch.long).clamp(min=1)
        return cls(*(to_device(x, device) for x in (flat, rows, count)), where.shape[0])

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, ...) -> (N, ...): the selected positions, as ``x[where]`` gives them."""
        return x.flatten(0, 1).index_select(0, self.flat)


def _selection(where, device) -> Selection:
    return where if isinstance(where, Selection) else Selection.of(where, device)


def has_next_head(model) -> bool:
    return getattr(model, "next_token_head", None) is not None


def weighted_ce(logits: torch.Tensor, targets: torch.Tensor, where, weight: torch.Tensor,
                denom: torch.Tensor, normalize: str) -> torch.Tensor:
    """sum over ``where`` of CE * weight, normalised per row by ``denom`` then averaged ("tokens"), or divided
    by the number of counted positions ("masked"). logits (B, L, V); targets, weight (B, L); ``where`` a
    (B, L) bool mask or its :class:`Selection`; denom (B,)."""
    where = _selection(where, logits.device)
    ce = F.cross_entropy(where.take(logits).float(), where.take(targets), reduction="none")
    return reduce_ce(ce, where, weight, denom, normalize)


def weighted_linear_ce(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, where,
                       weight: torch.Tensor, denom: torch.Tensor, normalize: str) -> torch.Tensor:
    """:func:`weighted_ce` of the logits ``hidden @ head.T`` without building them: hidden (B, L, D), head (V, D);
    only the counted rows are projected, through the fused linear cross-entropy where it runs."""
    where = _selection(where, hidden.device)
    ce = linear_cross_entropy(where.take(hidden), head, where.take(targets), fused=True)
    return reduce_ce(ce, where, weight, denom, normalize)


def reduce_ce(ce: torch.Tensor, where, weight: torch.Tensor, denom: torch.Tensor,
              normalize: str) -> torch.Tensor:
    """ce (N,): the CE of the N positions where ``where`` (B, L) holds, in row-major order -> the scalar loss."""
    where = _selection(where, ce.device)
    ce = ce * where.take(weight)
    if normalize == "masked":
        return ce.sum() / where.count
    rows = torch.zeros(where.batch, device=ce.device, dtype=ce.dtype).index_add_(0, where.rows, ce)
    return (rows / denom.clamp(min=1)).mean()


def masked_diffusion_loss(model, x0: torch.Tensor, eligible: torch.Tensor, attention_mask: Optional[torch.Tensor],
                          obj: ObjectiveSection, mask_id: int, gen: torch.Generator,
                          tokens: Optional[int] = None) -> LossOutput:
    """One LLaDA training loss on clean ids x0 (B, L); only ``eligible`` (B, L) positions may be masked.

    ``eligible`` is best given on the CPU (the trainer does): the mask is drawn there, so the masked rows are
    indexed without a device sync. ``tokens``: the tokens processed, when the caller knows it on the host
    (otherwise counted from ``attention_mask``, a sync when that lives on a device)."""
    dev, eligible = x0.device, eligible.cpu()  # a no-op for the trainer's host masks
    masked, t = sample_mask(eligible, obj.min_t, obj.max_t, gen, shared_t=obj.t_sampling == "micro_batch")
    xt = torch.where(to_device(masked, dev), torch.full_like(x0, mask_id), x0)
    use_next = has_next_head(model) and obj.next_head_weight > 0
    fused = uses_fused_ce(model)  # the heads' logits are never built: CE straight from the hidden states
    out = model(xt, attention_mask=attention_mask, compute_next=use_next, compute_logits=not fused)
    weight = to_device(1.0 / t, dev)[:, None].expand(masked.shape)
    denom = to_device(eligible.sum(1), dev)

    def head_ce(logits, head: str, targets, where: Selection):
        if fused:
            return weighted_linear_ce(out.hidden_states, head_weight(model, head), targets, where, weight, denom,
                                      obj.normalize)
        return weighted_ce(logits, targets, where, weight, denom, obj.normalize)

    cur = head_ce(out.logits, "lm_head", x0, Selection.of(masked, dev))
    # mask_frac comes from the host mask: a Python float, no device read
    metrics = {"loss_cur": cur.detach(), "mask_frac": (masked.sum() / eligible.sum().clamp(min=1)).item()}
    loss = cur
    if use_next:
        nxt_where = torch.zeros_like(masked)
        nxt_where[:, :-1] = masked[:, 1:]
        nxt_targets = torch.zeros_like(x0)
        nxt_targets[:, :-1] = x0[:, 1:]
        nxt = head_ce(out.next_logits, "next_token_head", nxt_targets, Selection.of(nxt_where, dev))
        loss = loss + obj.next_head_weight * nxt
        metrics["loss_next"] = nxt.detach()
    if tokens is None:
        tokens = int(eligible.numel() if attention_mask is None else attention_mask.sum())
    return LossOutput(loss, metrics, tokens)


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
        eligible = torch.ones(x0.shape, dtype=torch.bool)  # on the CPU: the mask is drawn there
        return masked_diffusion_loss(model, x0, eligible, None, self.cfg.objective, self.mask_id, gen)


class SFTObjective:
    """Stage 2: the prompt is never masked; the eos-padded response is the diffusion target."""

    kind = "chat"

    def __init__(self, cfg: TrainConfig, special: dict):
        self.cfg, self.mask_id = cfg, special["mask_token_id"]

    def loss(self, model, batch: ChatBatch, gen: torch.Generator, step: int) -> LossOutput:
        host = batch.on_host()  # masks and lengths from the CPU batch: no device reads
        eligible = chat_eligible(host, self.cfg.objective.mask_first_response_token)
        return masked_diffusion_loss(model, batch.input_ids, eligible, batch.attention_mask,
                                     self.cfg.objective, self.mask_id, gen, tokens=int(host.attention_mask.sum()))


def chat_eligible(batch: ChatBatch, mask_first: bool) -> torch.Tensor:
    """(B, T) bool: the positions a chat stage may mask - the eos-padded response, without its first token
    when ``mask_first`` is off (ME-DLM never masks it)."""
    if mask_first:
        return batch.response_mask
    first = torch.zeros_like(batch.response_mask)
    first[torch.arange(first.shape[0], device=first.device), batch.prompt_len.to(first.device)] = True
    return batch.response_mask & ~first
