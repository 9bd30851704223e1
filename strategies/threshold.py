"""Fast-dLLM parallel decoding (Wu et al., 2025): commit every masked position whose confidence
exceeds a threshold, at least one per pass, block by block.

A row moves to the next block when its current block is full, so rows advance at their own
pace and finish early. To stay inside the budget each block is allotted an even share of the
passes (unused passes carry over to the next block), and a pass commits at least
ceil(masks left in the block / passes left for it) positions.

Presets: ``paper`` is Fast-dLLM's ``llada/generate.py`` with its scripts' settings (tau 0.9, blocks of 32):
commit the most confident masked position and every other one with confidence >= tau, nothing banned
(a predicted mask id stays a mask), no allotment. Fast-dLLM has no pass cap; here the budget is one:
a row that reaches its last budgeted pass commits every masked position it has left, in every block,
as that pass predicts them (the only departure from the reference, and only when the cap binds; at
budget 1 a mask-banning model never reaches it). Budget mapping: Fast-dLLM's ``steps`` is unused by its
threshold rule; ceil(budget * gen_length) is only the cap. ``project`` is the dataclass default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from refinery.core.typed import ranged
from refinery.core.types import StepRecord

from refinery.strategies.base import (DecodeContext, DecodeState, ForwardOutput, Preset, Strategy, StrategyConfig,
                                      check_block_length, commit)
from refinery.strategies.registry import register
from refinery.strategies.sampling import NEG_INF, ban_tokens, banned_ids, predict, select_topk, split_evenly


@dataclass(frozen=True)
class ThresholdConfig(StrategyConfig):
    threshold: float = ranged(0.9, 0, 1)  # commit every masked position whose confidence exceeds this
    block_length: Optional[int] = None  # blocks decoded in order (divides gen_length); None = one block
    temperature: float = ranged(0.0, 0)  # Gumbel temperature for the predicted tokens; 0 = greedy
    inclusive: bool = False  # commit confidence >= threshold (Fast-dLLM) instead of > threshold
    allot: bool = True  # per-block pass allotment forcing extra commits; False = only the final pass is forced
    bans: Literal["mask+delete", "mask", "none"] = "mask+delete"  # ids never predicted (Fast-dLLM: none)

    def check(self, gen_length: int, max_nfe: int) -> None:
        super().check(gen_length, max_nfe)
        check_block_length(self.block_length, gen_length)


@register("threshold")
class ThresholdStrategy(Strategy):
    description = "Fast-dLLM: commit every masked position above a confidence threshold (>= 1 per pass), by block"
    config_class = ThresholdConfig
    presets = {
        "paper": Preset(dict(threshold=0.9, block_length=32, inclusive=True, allot=False, bans="none"),
                        "Fast-dLLM llada/generate.py + eval scripts: confidence >= 0.9, the top one always, blocks "
                        "of 32, nothing banned, no allotment; budget = a cap: a row's last budgeted pass commits "
                        "all its remaining masks"),
        "project": Preset({}, "the defaults: > threshold, one block, per-block allotment of the budget, mask and "
                              "delete ids never predicted"),
    }
    cache_modes = ("none", "prefix", "dual")
    dual_needs_blocks = True  # a pass writes only inside each row's current block

    def cache_window(self, ctx: DecodeContext, state: DecodeState) -> tuple[int, int]:
        """The span of the active rows' current blocks (rows advance at their own pace): one host read."""
        size = self._size(ctx.gen_length)
        block = _current_block(ctx, state, size)[0]
        blocks = torch.where(state.active, block, -1), torch.where(state.active, block, ctx.gen_length)
        final = (state.active & (state.nfe + 1 >= ctx.max_nfe)).any()  # a row is at its last budgeted pass
        last, first, at_end = (int(v) for v in torch.stack([blocks[0].max(), blocks[1].min(), final.long()]).tolist())
        if last < 0:  # no active row: the loop stops before any pass
            return 0, ctx.gen_length
        if not self.config.allot and at_end:
            return 0, ctx.gen_length  # a row's last budgeted pass may commit in any block: compute them all
        return first * size, (last + 1) * size

    def _size(self, L: int) -> int:
        return self.config.block_length or L

    def min_passes(self, gen_length: int) -> int:
        if not self.config.allot:  # the last budgeted pass commits every block's masks
            return 1
        return gen_length // self._size(gen_length)

    def begin(self, ctx: DecodeContext, state: DecodeState) -> None:
        nb = ctx.gen_length // self._size(ctx.gen_length)
        allot = torch.tensor(split_evenly(ctx.max_nfe, nb), device=state.x.device)
        state.extra["cum_passes"] = allot.cumsum(0)  # passes a row may have used by the end of block i

    def step(self, ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
        size = self._size(ctx.gen_length)
        region = state.x[:, ctx.prompt_width:]
        block, in_block = _current_block(ctx, state, size)
        cfg = self.config
        logits = ban_tokens(out.logits, banned_ids(cfg.bans, ctx.mask_id, ctx.delete_id))
        final = state.nfe >= ctx.max_nfe  # (B,) this is the row's last budgeted pass
        if not cfg.allot:  # the final pass may commit outside the current block
            in_block = in_block | ((region == ctx.mask_id) & final[:, None])
        off, n = out.offset, logits.shape[1]  # a cached pass computes only the columns [off, off + n)
        x0, conf = predict(logits, cfg.temperature, ctx.generators, where=in_block[:, off:off + n])
        x0 = out.widen(x0, region)
        conf = out.widen(conf, torch.zeros(region.shape, dtype=conf.dtype, device=conf.device))
        left = in_block.sum(1)
        if cfg.allot:
            passes_left = (state.extra["cum_passes"][block] - state.nfe + 1).clamp(min=1)  # this pass included
            need = -(-left // passes_left)
        else:
            need = torch.where(final, left, torch.zeros_like(left))
        above = (in_block & ((conf >= cfg.threshold) if cfg.inclusive else (conf > cfg.threshold))).sum(1)
        k = torch.maximum(torch.maximum(above, need), torch.ones_like(need))
        select = select_topk(torch.where(in_block, conf, NEG_INF), k)
        record = commit(ctx, state, select, x0, conf)
        if cfg.bans != "mask+delete":  # a committed mask id can leave masks after the last budgeted pass
            state.active = state.active & ~final
        return record


def _current_block(ctx: DecodeContext, state: DecodeState, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) each row's current block (the one holding its first mask), (B, L) its masked positions in it."""
    region = state.x[:, ctx.prompt_width:]
    masked = region == ctx.mask_id
    L = ctx.gen_length
    pos = torch.arange(L, device=region.device)
    first = torch.where(masked, pos, L).min(1).values.clamp(max=L - 1)
    block = first // size
    return block, masked & ((pos[None, :] // size) == block[:, None])
