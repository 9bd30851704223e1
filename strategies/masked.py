"""LLaDA's sampler (Nie et al., 2025, Algorithms 4-5): commit the most confident masked positions.

Each pass predicts every masked position (argmax, or a float64 Gumbel sample at temperature T),
then commits the ``k`` best by confidence (the predicted token's probability) or at random;
``k`` follows the uniform transfer schedule implied by LLaDA's linear noise schedule. With
``block_length`` the region is decoded block by block (semi-autoregressive), the passes split
evenly over the blocks. Classifier-free guidance mixes in the prompt-masked logits:
``uncond + (w + 1) * (cond - uncond)`` (LLaDA Eq. 16), charged as two forward passes.

Presets: ``paper`` is LLaDA's ``generate.py`` (no banned predictions, so a predicted mask id stays a mask
and is a candidate again in later passes and blocks, LLaDA's eos options available, uneven step splits
refused); ``project`` is the dataclass default. Budget mapping: our budget counts forward passes, so
LLaDA's ``steps`` = ceil(budget * gen_length) / (2 if cfg_scale > 0 else 1); to reproduce LLaDA at
``steps`` S with guidance, give budget 2 * S / gen_length (each LLaDA step is two forwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from refinery.core.typed import ranged
from refinery.core.types import StepRecord

from refinery.strategies.base import (DecodeContext, DecodeState, ForwardOutput, ForwardRequest, Preset, Strategy,
                                      StrategyConfig, check_block_length, commit)
from refinery.strategies.registry import register
from refinery.strategies.sampling import (NEG_INF, ban_tokens, banned_ids, planned_passes, predict, select_topk,
                                          split_evenly, transfer_counts, uniform_rand)


@dataclass(frozen=True)
class MaskedConfig(StrategyConfig):
    remasking: Literal["low_confidence", "random"] = "low_confidence"  # what ranks the masked positions
    temperature: float = ranged(0.0, 0)  # Gumbel temperature; 0 = greedy
    block_length: Optional[int] = None  # semi-AR block length (divides gen_length); None = one block
    cfg_scale: float = ranged(0.0, 0)  # classifier-free guidance weight w; > 0 doubles the cost of a pass
    suppress_eos: bool = False  # rank end-of-text / end-of-turn predictions last
    tokens_per_pass: Optional[int] = ranged(None, 1)  # commit k per pass (finishing early), not the spread budget
    bans: Literal["mask+delete", "mask", "none"] = "mask+delete"  # ids never predicted (LLaDA: none)
    logits_eos_inf: bool = False  # LLaDA: end-of-text logit -inf before the token choice
    confidence_eos_eot_inf: bool = False  # LLaDA: end-of-text / end-of-turn get confidence 0 (see eos_eot_confidence)
    # passes that do not divide over blocks: split them, or refuse (LLaDA)
    uneven_steps: Literal["split", "refuse"] = "split"

    def check(self, gen_length: int, max_nfe: int) -> None:
        super().check(gen_length, max_nfe)
        check_block_length(self.block_length, gen_length)
        cost = 2 if self.cfg_scale > 0 else 1
        nb = self.num_blocks(gen_length)
        if self.uneven_steps == "refuse" and (max_nfe % cost or (max_nfe // cost) % nb):
            raise ValueError(f"uneven_steps='refuse': {max_nfe} forward passes give {max_nfe / cost:g} LLaDA steps "
                             f"(cost {cost} per step), which do not divide over {nb} block(s)")

    def num_blocks(self, gen_length: int) -> int:
        return 1 if self.block_length is None else gen_length // self.block_length


@register("masked")
class MaskedStrategy(Strategy):
    description = "LLaDA: commit the most confident (or random) masked positions each pass, optionally block by block"
    config_class = MaskedConfig
    presets = {
        "paper": Preset(dict(bans="none", uneven_steps="refuse"),
                        "LLaDA generate.py (ML-GSAI/LLaDA): nothing banned (a predicted mask id stays in the output), "
                        "logits_eos_inf / confidence_eos_eot_inf as options, steps = budget*L (/2 under CFG, each "
                        "step = 2 forwards), steps not dividing over blocks refused"),
        "project": Preset({}, "the defaults: mask and delete ids never predicted, uneven step splits allowed"),
    }
    cache_modes = ("none", "prefix", "dual")
    dual_needs_blocks = True  # a pass writes only inside its block

    def cache_window(self, ctx: DecodeContext, state: DecodeState) -> tuple[int, int]:
        block_of_pass, _, bounds = state.extra["plan"]
        return bounds[block_of_pass[min(state.step, len(block_of_pass) - 1)]]

    def min_passes(self, gen_length: int) -> int:
        return self.config.num_blocks(gen_length) * (2 if self.config.cfg_scale > 0 else 1)

    def request(self, ctx: DecodeContext, state: DecodeState) -> ForwardRequest:
        return ForwardRequest(uncond=self.config.cfg_scale > 0)

    def begin(self, ctx: DecodeContext, state: DecodeState) -> None:
        state.extra["plan"] = plan = block_plan(self.config, ctx, state)
        state.extra["plan_passes"] = planned_passes(plan[1])

    def sure_passes(self, ctx: DecodeContext, state: DecodeState) -> int:
        return max(state.extra["plan_passes"] - state.step, 0)

    def step(self, ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
        cfg = self.config
        block_of_pass, counts, bounds = state.extra["plan"]
        s = state.step
        logits = guided_logits(out, cfg.cfg_scale)
        ban_tokens(logits, banned_ids(cfg.bans, ctx.mask_id, ctx.delete_id))
        if cfg.logits_eos_inf:
            ban_tokens(logits, (ctx.eos_id,))
        hi = bounds[block_of_pass[s]][1]
        region = state.x[:, ctx.prompt_width:]
        # Masks before the block are candidates too: only a committed mask id (bans="none") leaves one there,
        # and LLaDA ranks it again with the current block.
        candidates = region == ctx.mask_id
        candidates[:, hi:] = False
        off, n = out.offset, logits.shape[1]  # a cached pass computes only the columns [off, off + n)
        x0, conf = predict(logits, cfg.temperature, ctx.generators, where=candidates[:, off:off + n])
        if cfg.confidence_eos_eot_inf:
            conf = eos_eot_confidence(logits, x0, ctx, cfg.temperature)
        x0 = out.widen(x0, region)
        conf = out.widen(conf, torch.zeros(region.shape, dtype=conf.dtype, device=conf.device))
        scores = uniform_rand(x0.shape, ctx.generators, x0.device) if cfg.remasking == "random" else conf
        if cfg.suppress_eos:
            scores = torch.where(eos_like(x0, ctx), scores - 2.0, scores)  # below every ordinary confidence
        select = select_topk(torch.where(candidates, scores, NEG_INF), counts[:, s])
        record = commit(ctx, state, select, x0, scores)
        if s + 1 >= len(block_of_pass):  # the plan is spent: LLaDA stops, even with (predicted) masks left
            state.active = torch.zeros_like(state.active)
        return record


def guided_logits(out: ForwardOutput, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance (LLaDA Eq. 16) or a writable copy of the conditional logits."""
    if cfg_scale > 0:
        return out.uncond_logits + (cfg_scale + 1) * (out.logits - out.uncond_logits)
    return out.logits


def eos_eot_confidence(logits: torch.Tensor, x0: torch.Tensor, ctx: DecodeContext, temperature: float) -> torch.Tensor:
    """LLaDA's ``confidence_eos_eot_inf``: the confidence is softmax(logits)[x0] with the end-of-turn logit
    set to -inf, and the end-of-text logit too when greedy. LLaDA writes ``noisy[:, :, eos] = logits[:, :, eot]
    = -inf``; its noisy logits are the logits themselves at temperature 0, a separate copy otherwise, so only
    greedy decoding bans eos from the softmax. A banned prediction gets confidence 0, and the softmax of
    every other prediction loses the banned mass. (B, L, V), (B, L) -> (B, L) float64."""
    masked = ban_tokens(logits.clone(), (ctx.eot_id,) + ((ctx.eos_id,) if temperature == 0 else ()))
    chosen = masked.gather(-1, x0.unsqueeze(-1)).squeeze(-1).double()
    return torch.exp(chosen - torch.logsumexp(masked.double(), dim=-1))


def eos_like(x0: torch.Tensor, ctx: DecodeContext) -> torch.Tensor:
    out = x0 == ctx.eos_id
    if ctx.eot_id is not None:
        out |= x0 == ctx.eot_id
    return out


def block_plan(cfg: MaskedConfig, ctx: DecodeContext, state: DecodeState):
    """(block index of each pass, per-row commit counts (B, passes), [(lo, hi)] block bounds).

    The passes (budget // cost) are split evenly over the blocks; within a block each row's masks follow
    the uniform transfer schedule (or ``tokens_per_pass``)."""
    L = ctx.gen_length
    nb = cfg.num_blocks(L)
    size = L // nb
    bounds = [(i * size, (i + 1) * size) for i in range(nb)]
    steps = split_evenly(ctx.max_nfe // (2 if cfg.cfg_scale > 0 else 1), nb)
    region = state.x[:, ctx.prompt_width:]
    block_of_pass, counts = [], []
    for i, (lo, hi) in enumerate(bounds):
        masks = (region[:, lo:hi] == ctx.mask_id).sum(1)
        counts.append(transfer_counts(masks, steps[i], cfg.tokens_per_pass))
        block_of_pass += [i] * steps[i]
    return block_of_pass, torch.cat(counts, 1), bounds
