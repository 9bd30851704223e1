"""Convolutional decoding (Seo et al., 2025, "Conv"): a soft window instead of hard blocks.

A centred box kernel of width ``window`` counts the decoded positions (prompt included) around
every position; ``gate = tanh(gate_scale * count)`` is ~1 next to decoded text and 0 far from
it, so unmasking flows outward from the context without semi-AR segmentation.

- ``confidence``: LLaDA's low-confidence ranking with confidence multiplied by the gate; the
  uniform transfer schedule fixes how many positions each pass commits.
- ``stochastic``: the paper's sampler. Each masked position chooses among its ``top_k``
  candidate tokens (weights p_j * c * gate * (t - s)) and staying masked (weight s), where the
  per-row normaliser c = (#masked) / sum_masked(gate * sum_j p_j) keeps the total unmasking
  mass of the uniform schedule. The final pass commits every position still masked.

Preset ``paper`` is the Conv repo's stochastic sampler (``r2ft_tools._ddpm_convolution_update`` driven by
``generate_yb``): the normaliser sums the top-(k+1) probabilities (``norm_top="k+1"``: the reference takes
k + 1 candidates and overwrites the last one's weight with "stay masked"), temperature 1, kernel 128 (the
README's generation script), ReMDM-style time grid t_i = 1 - i (1 - 1e-5) / S with no final commit-all
(``timing="reference"``: a mask can survive, with probability ~1e-5 per position at the last step), only the
mask id banned (SUBS). Budget mapping: the reference's ``steps`` = ceil(budget * gen_length). ``project`` is
the dataclass default (the repo's ``generate_llada_convolution`` confidence variant, window 32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from refinery.core.typed import ranged
from refinery.core.types import StepRecord
from refinery.strategies.base import DecodeContext, DecodeState, ForwardOutput, Preset, Strategy, StrategyConfig, commit
from refinery.strategies.registry import register
from refinery.strategies.sampling import (NEG_INF, ban_tokens, banned_ids, gumbel_argmax, planned_passes, predict,
                                          select_topk, transfer_counts)

EPS = 1e-5  # the reference grid's last time point


@dataclass(frozen=True)
class ConvConfig(StrategyConfig):
    variant: Literal["confidence", "stochastic"] = "confidence"  # ranking by gated confidence, or the paper's sampler
    window: int = ranged(32, 1)  # box-kernel width in tokens (made odd so it is centred)
    gate_scale: float = ranged(1.0, 0, open="lo")  # tanh(gate_scale * decoded count): how fast the gate saturates
    top_k: int = ranged(1, 1)  # candidate tokens per position (stochastic variant)
    temperature: float = ranged(0.0, 0)  # Gumbel temperature; 0 = greedy token and deterministic unmask decisions
    norm_top: Literal["k", "k+1"] = "k"  # stochastic: the normaliser sums the top-k (or top-(k+1): the paper) probs
    timing: Literal["project", "reference"] = "project"  # our grid + final commit-all, or the reference's grid
    bans: Literal["mask+delete", "mask", "none"] = "mask+delete"  # ids never predicted (the reference: the mask id)


def conv_gate(state: DecodeState, ctx: DecodeContext, window: int, gate_scale: float) -> torch.Tensor:
    """tanh(gate_scale * box(decoded)) over the region. (B, P+L) canvas -> (B, L) gate in [0, 1)."""
    width = window + (window % 2 == 0)
    decoded = ((state.x != ctx.mask_id) & state.attention_mask).float()[:, None, :]
    kernel = torch.ones(1, 1, width, device=decoded.device)
    counts = F.conv1d(decoded, kernel, padding=width // 2)[:, 0, ctx.prompt_width:]
    return torch.tanh(gate_scale * counts)


@register("conv")
class ConvStrategy(Strategy):
    description = "Convolutional decoding: a soft tanh window around decoded text decides where to unmask"
    config_class = ConvConfig
    presets = {
        "paper": Preset(dict(variant="stochastic", window=128, gate_scale=1.0, top_k=1, temperature=1.0,
                             norm_top="k+1", timing="reference", bans="mask"),
                        "Conv r2ft_tools._ddpm_convolution_update / generate_yb (decode_type conv): stochastic "
                        "sampler, normaliser over top-(k+1), temperature 1, kernel 128, eps time grid, no final "
                        "commit-all; steps = budget*L"),
        "project": Preset({}, "the defaults: the repo's generate_llada_convolution (gated LLaDA confidence, "
                              "uniform schedule), window 32, greedy; mask and delete ids never predicted"),
    }
    # The soft window may unmask any region column: only the prompt's keys and values can be kept.
    cache_modes = ("none", "prefix")
    no_cache_reason = ("the soft window may unmask any region column, so no column beyond the prompt stays fixed "
                       "for a dual cache; use cache='prefix'")

    def begin(self, ctx: DecodeContext, state: DecodeState) -> None:
        masks = (state.x[:, ctx.prompt_width:] == ctx.mask_id).sum(1)
        state.extra["counts"] = counts = transfer_counts(masks, ctx.max_nfe)
        state.extra["steps"] = ctx.max_nfe
        if self.config.variant == "confidence":  # a fixed plan (the stochastic variant may finish early)
            state.extra["plan_passes"] = planned_passes(counts)

    def sure_passes(self, ctx: DecodeContext, state: DecodeState) -> int:
        return max(state.extra.get("plan_passes", 0) - state.step, 0)

    def step(self, ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
        cfg = self.config
        logits = ban_tokens(out.logits, banned_ids(cfg.bans, ctx.mask_id, ctx.delete_id))
        masked = state.x[:, ctx.prompt_width:] == ctx.mask_id
        gate = conv_gate(state, ctx, cfg.window, cfg.gate_scale)
        last = state.step == state.extra["steps"] - 1
        if cfg.variant == "stochastic" and cfg.timing == "reference":
            record = self._stochastic(ctx, state, logits, masked, gate)
            if last:  # the reference stops after its S steps, masks or not
                state.active = torch.zeros_like(state.active)
            return record
        if cfg.variant == "confidence" or last:
            x0, conf = predict(logits, cfg.temperature, ctx.generators, where=masked)
            scores = conf * gate
            k = masked.sum(1) if last else state.extra["counts"][:, state.step]
            select = select_topk(torch.where(masked, scores, NEG_INF), k)
            return commit(ctx, state, select, x0, scores)
        return self._stochastic(ctx, state, logits, masked, gate)

    def _stochastic(self, ctx, state, logits, masked, gate) -> StepRecord:
        cfg, S, i = self.config, state.extra["steps"], state.step
        if cfg.timing == "reference":
            t = 1.0 - i * (1.0 - EPS) / S
            s = t - (1.0 - EPS) / S
        else:
            t, s = 1.0 - i / S, 1.0 - (i + 1) / S
        probs = logits.float().softmax(-1)
        top_p, top_ids = probs.topk(cfg.top_k + (cfg.norm_top == "k+1"), dim=-1)  # (B, L, k or k + 1)
        mass = top_p.sum(-1) * gate
        top_p, top_ids = top_p[..., :cfg.top_k], top_ids[..., :cfg.top_k]  # the candidates
        norm = masked.sum(1) / (mass * masked).sum(1).clamp_min(1e-12)  # per-row c
        weights = torch.cat([top_p * (norm[:, None] * gate * (t - s))[..., None],
                             torch.full_like(top_p[..., :1], s)], -1)  # last column: stay masked
        choice = gumbel_argmax(weights.clamp_min(1e-30).log(), cfg.temperature, ctx.generators)
        select = masked & (choice < cfg.top_k)
        x0 = top_ids.gather(-1, choice.clamp(max=cfg.top_k - 1)[..., None])[..., 0]
        return commit(ctx, state, select, x0, mass * norm[:, None])
