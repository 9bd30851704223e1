"""ME-DLM edit refinement: a mask phase, then fully parallel edit passes.

1. Mask phase: LLaDA's confidence-ordered unmasking (delete token banned) on ``M`` passes.
2. The draft's end-of-text padding is stripped: the region shrinks to each row's own length and
   padding leaves the attention mask, so rows of different lengths edit side by side. The draft is
   kept (``GenerationResult.draft_tokens``) so that ablations can score it against the final text.
3. Edit passes (``E`` of the budget): one forward with both heads, then ``apply_edits``: delete
   where the current head says <|del|>, replace by the current head, insert the next-token
   head's token in a gap where it differs from the following token's prediction (one per gap).
   A row stops as soon as a pass changes nothing and is charged no further passes.
4. Optional stop rules against edits that diverge instead of converging: ``stop_on_growth``
   rejects a pass that changes more positions than the row's previous pass did, and
   ``max_change_fraction`` rejects a pass that would change more than that share of the row's
   tokens; a rejected pass leaves the row as it was and stops it (the forward is still charged).
5. Optional confidence gate ``min_edit_confidence``: a replacement or deletion applies only where
   the current head's probability for it reaches the threshold, an insertion only where the
   next-token head's does; elsewhere the token stays and the gap stays empty.
6. Optional keep rule ``keep_threshold``: an edit applies only where its head doubts the present text,
   i.e. gives the present token (for an insertion: the token that now follows the gap, or
   end-of-text) a probability below the threshold. Unlike the confidence gate it asks whether the
   text is wrong, not whether the proposal is sure: a correct draft token the head merely finds
   less likely than another stays. ``insert_keep_threshold`` sets a separate (usually lower) bar
   for insertions: the next-token head reads like a left-to-right prior and can doubt a correct
   but rare token after a familiar prefix (``count_`` followed by an unseen name).
7. Optional undo rule ``revert_margin``: each edit forward also scores the present text, as the mean
   log-probability the current head gives its tokens. When a row's text scores lower than a text it
   had before (by more than the margin), the row goes back to that text, makes no edit, and stops
   (the forward is charged; the trace records a ``reverted`` event). ``revert_to`` says which
   earlier text: ``"previous"`` (the text before the last pass: a single bad pass is undone) or
   ``"best"`` (the best-scoring text so far, the draft included: small steps that drift away
   together are undone too). The score of a text comes from the forward that edits it anyway, so
   the rule costs no pass; the edits of a row's last pass are the only ones it never checks.

The budget split is a parameter: ``edit_passes`` fixed, or ``edit_fraction`` of the passes
(ME-DLM's 1/8 setting on 512 tokens was 48 mask + 16 edit passes, i.e. a quarter).

ME-DLM's own inference differs from the defaults above in six places, each behind an option (all off by
default; the ``paper`` preset turns them on, rules in :mod:`strategies.edit_rules`):
``mask_phase="medlm"`` (pad predictions rank last, only delete banned), ``draft_rule="strip_pads"`` and
``final_eot`` (pads removed anywhere, the last token forced to end-of-turn), ``insert_gaps="before_kept"``
(no gap before a deleted token nor after the last one), ``any_token`` (no bans in the edit passes: eos,
pad and delete can be inserted), ``max_length`` (growth cap per row, prompt included), and the 3:1 split
``edit_fraction=0.25`` at every budget.

Growth room: without ``max_length`` a row is cut at ``gen_length`` tokens (the canvas never changes). With
it, the canvas widens pass by pass as far as the longest row grows (never to the cap itself, so a cap of
6144 costs nothing until rows get long), ``GenerationResult.tokens`` may be wider than ``gen_length``
(read ``lengths``), and traces pad earlier passes to the final width. ME-DLM's cap counts a whole packed
batch (its packs start at <= 4096 tokens); here it counts each row, which is what ME-DLM does for a pack of
one, and keeps a row's result independent of its batch. The model's ``max_sequence_length`` is not
enforced (rotary positions extrapolate, as in ME-DLM on LLaDA's 4096): rows past it leave the trained range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from refinery.core.typed import ranged
from refinery.core.types import StepRecord, apply_edits
from refinery.strategies.base import (DecodeContext, DecodeState, ForwardOutput, ForwardRequest, Preset, Strategy,
                             StrategyConfig)
from refinery.strategies.edit_rules import apply_with_room, finish_draft, medlm_mask_begin, medlm_mask_step, plan_room
from refinery.strategies.masked import MaskedConfig, MaskedStrategy
from refinery.strategies.registry import register
from refinery.strategies.sampling import ban_tokens, log_probability_from_top, predict, probability_from_top


@dataclass(frozen=True)
class EditConfig(StrategyConfig):
    edit_passes: Optional[int] = ranged(None, 0)  # passes kept for edits; None = round(edit_fraction * budget passes)
    edit_fraction: float = ranged(0.25, 0, 1, open="hi")  # share of the passes given to edits when edit_passes is None
    block_length: Optional[int] = None  # mask phase: semi-AR block length; None = one block
    temperature: float = 0.0  # mask phase: Gumbel temperature
    stop_when_unchanged: bool = True  # a row stops once an edit pass changes nothing
    stop_on_growth: bool = False  # reject (and stop at) a pass that changes more than the row's previous pass
    # reject (and stop at) a pass changing more than this share
    max_change_fraction: Optional[float] = ranged(None, 0, 1, open="lo")
    # an edit applies only where its head's probability reaches this
    min_edit_confidence: Optional[float] = ranged(None, 0, 1)
    # an edit applies only where its head gives the present text less than this
    keep_threshold: Optional[float] = ranged(None, 0, 1, open="lo")
    # the same bar for insertions only; None = keep_threshold
    insert_keep_threshold: Optional[float] = ranged(None, 0, 1, open="lo")
    revert_margin: Optional[float] = ranged(None, 0)  # go back and stop if the text scores lower than before by more
    revert_to: Literal["previous", "best"] = "previous"  # the earlier text compared and gone back to
    mask_phase: Literal["llada", "medlm"] = "llada"  # medlm: ME-DLM's mask phase (pad ranks last, mask id allowed)
    draft_rule: Literal["cut", "strip_pads"] = "cut"  # draft ends at the first eos/pad, or loses every pad
    final_eot: bool = False  # the draft's last token becomes end-of-turn when edit passes follow (ME-DLM)
    insert_gaps: Literal["all", "before_kept"] = "all"  # before_kept: ME-DLM's gaps (before surviving tokens)
    any_token: bool = False  # edit heads unbanned and any token insertable, eos / pad / delete too (ME-DLM)
    max_length: Optional[int] = None  # rows grow to this many tokens, prompt included (None: cut at gen_length)

    def check(self, gen_length: int, max_nfe: int) -> None:
        super().check(gen_length, max_nfe)
        if self.mask_phase == "medlm" and (self.block_length is not None or self.temperature != 0.0):
            raise ValueError("mask_phase='medlm' is ME-DLM's greedy one-block mask phase: "
                             "block_length must be None and temperature 0")
        if self.max_length is not None and self.max_length <= gen_length:
            raise ValueError(f"max_length={self.max_length} must exceed gen_length={gen_length} (prompt included)")
        self.mask_config().check(gen_length, max_nfe)

    def mask_config(self) -> MaskedConfig:
        return MaskedConfig(block_length=self.block_length, temperature=self.temperature)

    def split(self, max_nfe: int) -> tuple[int, int]:
        """(mask passes, edit passes) out of ``max_nfe``."""
        e = self.edit_passes if self.edit_passes is not None else round(self.edit_fraction * max_nfe)
        e = min(e, max_nfe - 1)
        return max_nfe - e, e


@register("edit")
class EditStrategy(Strategy):
    description = "ME-DLM: mask phase, then parallel replace / delete / insert passes with a next-token head"
    config_class = EditConfig
    presets = {
        "paper": Preset(
            {"edit_fraction": 0.25, "edit_passes": None, "mask_phase": "medlm", "draft_rule": "strip_pads",
             "final_eot": True, "insert_gaps": "before_kept", "any_token": True, "max_length": 6144},
            "ME-DLM test.py: 3:1 mask:edit passes (48 + 16 for 512 tokens at 1/8) at every budget, its mask-phase "
            "ranking, pad stripping, forced final end-of-turn, insertion rule and 6144-token growth cap; a row "
            "stops at its first pass that changes nothing (same tokens as running on, NFE = its real edit steps)"),
        "project": Preset(
            {"edit_passes": 4, "keep_threshold": 0.5, "revert_margin": 0.5, "revert_to": "best"},
            "this project's tuned edit entry (experiments/ablations/embedded_default.yaml, chosen on the dev "
            "split): 4 edit passes, edits only where the head doubts the text, back to the best text"),
    }
    needs_next_head = True  # edit passes read the next-token head (insertions)
    needs_delete_token = True  # and the current head's delete token
    # The mask phase caches as ``masked`` does (dual only with blocks). Edit passes insert and delete, which
    # moves every region column, so they recompute the whole region (and the gap before it) on a cache of
    # the prompt alone: the loop refills it with a full pass when the edit phase starts.
    cache_modes = ("none", "prefix", "dual")

    def __init__(self, config: Optional[EditConfig] = None):
        super().__init__(config)
        # the mask phase's strategy depends on the config alone (no per-call state: that lives in state.extra)
        self._mask = MaskedStrategy(self.config.mask_config())

    def refuse_cache(self, mode: str) -> Optional[str]:
        if mode != "none" and (self.config.mask_phase == "medlm" or self.config.max_length is not None):
            return ("ME-DLM's mask phase and a growing canvas (mask_phase='medlm', max_length) are not cache-aware "
                    "yet; use cache='none'")
        if mode == "dual" and self.config.block_length is None:
            return ("the mask phase runs as one block (block_length=None) and edit passes may change every region "
                    "column, so a dual cache would keep nothing a prefix cache does not; set block_length or use "
                    "cache='prefix'")
        return super().refuse_cache(mode)

    def cache_window(self, ctx: DecodeContext, state: DecodeState) -> tuple[int, int]:
        if state.step < state.extra["mask_passes"]:
            return self._mask.cache_window(state.extra["mask_ctx"], state)
        return 0, ctx.gen_length

    def min_passes(self, gen_length: int) -> int:
        blocks = self.config.mask_config().num_blocks(gen_length)
        return blocks + (self.config.edit_passes if self.config.edit_passes is not None else 1)

    def begin(self, ctx: DecodeContext, state: DecodeState) -> None:
        M, E = self.config.split(ctx.max_nfe)
        if ctx.delete_id is None:
            raise ValueError("the edit strategy needs a delete token (config.delete_token_id)")
        if self.config.max_length is not None:
            plan_room(ctx, state, self.config.max_length)
        has_masks = bool((state.x[:, ctx.prompt_width:] == ctx.mask_id).any())
        mask_ctx = DecodeContext(**{**ctx.__dict__, "max_nfe": M})  # the mask phase sees its own share of passes
        state.extra["mask_ctx"] = mask_ctx
        state.extra["mask_passes"] = M if has_masks else 0
        state.extra["last_pass"] = ctx.max_nfe - 1 if has_masks else E - 1
        state.extra["edit_passes"] = E
        if not has_masks:
            self._finish_draft(ctx, state)
        elif self.config.mask_phase == "medlm":
            medlm_mask_begin(ctx, state, M)
        else:
            self._mask.begin(mask_ctx, state)

    def request(self, ctx: DecodeContext, state: DecodeState) -> ForwardRequest:
        return ForwardRequest(next_head=state.step >= state.extra["mask_passes"])

    def sure_passes(self, ctx: DecodeContext, state: DecodeState) -> int:
        M = state.extra["mask_passes"]
        if state.step >= M:
            return 0
        if self.config.mask_phase == "medlm":  # every row runs all M mask passes, as in ME-DLM
            return M - state.step
        return self._mask.sure_passes(state.extra["mask_ctx"], state)

    def step(self, ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
        M = state.extra["mask_passes"]
        if state.step < M:
            if self.config.mask_phase == "medlm":
                record = medlm_mask_step(ctx, state, out)
            else:
                record = self._mask.step(state.extra["mask_ctx"], state, out)
            if state.step == M - 1:  # mask phase over: make the draft, every row goes on to edit
                self._finish_draft(ctx, state, record)
                state.active = torch.full_like(state.active, state.step < state.extra["last_pass"])
            return record
        return self._edit(ctx, state, out)

    def _finish_draft(self, ctx: DecodeContext, state: DecodeState, record: Optional[StepRecord] = None) -> None:
        """The mask phase's region -> the draft (ME-DLM forces the end-of-turn only when edit passes follow)."""
        final_eot = self.config.final_eot and state.extra["edit_passes"] > 0
        finish_draft(self.config.draft_rule, final_eot, ctx, state, record)

    def _edit(self, ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
        P, charged, cfg = ctx.prompt_width, state.active, self.config
        region = state.x[:, P:]
        logits = out.logits if cfg.any_token else ban_tokens(out.logits, (ctx.mask_id,))
        next_logits = out.next_logits if cfg.any_token else ban_tokens(out.next_logits, (ctx.mask_id, ctx.delete_id))
        top, conf = predict(logits, 0.0, ctx.generators)
        reverted = _revert_worse(self.config, ctx, state, logits, top, conf)
        active = charged & (reverted < 0) if reverted is not None else charged  # a reverted row edits no more
        ntop, nconf = predict(next_logits, 0.0, ctx.generators)  # (B, L+1)
        cur, nxt = top, ntop
        may_insert = torch.ones_like(nxt, dtype=torch.bool)  # (B, L+1) gaps the gates leave open
        tau = self.config.min_edit_confidence
        if tau is not None:  # an unsure head keeps the token (no replace / delete) and inserts nothing
            cur = torch.where(conf >= tau, cur, region)
            may_insert &= nconf >= tau
        rho = self.config.keep_threshold
        if rho is not None:  # a head that finds the present text likely enough leaves it alone
            cur = torch.where(probability_from_top(logits, region, top, conf) < rho, cur, region)
        rho_insert = self.config.insert_keep_threshold or rho
        if rho_insert is not None:  # nor a gap whose following token the next-token head finds likely enough
            gap = torch.arange(region.shape[1] + 1, device=region.device)
            following = torch.cat([region, torch.full_like(region[:, :1], ctx.eos_id)], dim=1)
            following = torch.where(gap[None, :] < state.lengths[:, None], following, ctx.eos_id)
            may_insert &= probability_from_top(next_logits, following, ntop, nconf) < rho_insert
        rule = dict(gaps=cfg.insert_gaps, insert_specials=cfg.any_token)
        if cfg.max_length is not None:  # the canvas may widen here
            res = apply_with_room(ctx, state, cur, nxt, may_insert, **rule)
            region = state.x[:, P:]
        else:
            res = apply_edits(region, state.lengths, cur, nxt[:, 1:], nxt[:, 0], delete_id=ctx.delete_id,
                              eos_id=ctx.eos_id, pad_id=ctx.pad_id, allowed=may_insert, **rule)
        accept = _accepted(self.config, state, res, active)
        rows = accept[:, None]
        replaced, deleted, inserted = res.replaced & rows, res.deleted & rows, res.inserted & rows
        region.copy_(torch.where(rows, res.tokens, region))
        state.set_lengths(P, torch.where(accept, res.lengths, state.lengths))
        changed = replaced.any(1) | deleted.any(1) | inserted.any(1)
        if res.capped is not None:  # insertions the length cap refused are still wanted: not a fixed point
            changed |= res.capped & accept
        more = state.step < state.extra["last_pass"]
        state.active = accept & more & (changed if self.config.stop_when_unchanged else True)
        return StepRecord(phase="edit", tokens=region.clone(), lengths=state.lengths.clone(), replaced=replaced,
                          deleted=deleted, inserted=inserted, values=cur,
                          inserted_tokens=res.inserted_tokens, scores=conf, reverted=reverted)


def _revert_worse(config: EditConfig, ctx: DecodeContext, state: DecodeState, logits: torch.Tensor,
                  top: torch.Tensor, conf: torch.Tensor) -> Optional[torch.Tensor]:
    """The ``revert_margin`` rule: score each row's present text, put back the kept earlier text in the
    active rows that score lower than it by more than the margin, then keep this text (``revert_to``
    "previous") or keep it only where it scores at least as high ("best"). -> (B,) long: for each row
    put back (it edits no more) the pass its text is from (the text before that pass), else -1; None
    when the rule is off."""
    if config.revert_margin is None:
        return None
    P = ctx.prompt_width
    region = state.x[:, P:]
    logp = log_probability_from_top(logits, region, top, conf)
    valid = torch.arange(region.shape[1], device=region.device)[None, :] < state.lengths[:, None]
    score = torch.where(valid, logp, 0.0).sum(1) / state.lengths.clamp(min=1)
    now = torch.full_like(state.lengths, state.step)
    kept = state.extra.get("kept")  # (region, lengths, score, pass) of the text a worse one goes back to
    if kept is None:
        state.extra["kept"] = (region.clone(), state.lengths.clone(), score, now)
        return torch.full_like(now, -1)
    if kept[0].shape[1] < region.shape[1]:  # the canvas grew (max_length) since that text was kept
        wider = torch.full_like(region, ctx.pad_id)
        wider[:, : kept[0].shape[1]] = kept[0]
        kept = (wider, *kept[1:])
    back = state.active & (score < kept[2] - config.revert_margin)
    region.copy_(torch.where(back[:, None], kept[0], region))
    state.set_lengths(P, torch.where(back, kept[1], state.lengths))
    take = ~back if config.revert_to == "previous" else ~back & (score >= kept[2])
    state.extra["kept"] = (torch.where(take[:, None], region, kept[0]), torch.where(take, state.lengths, kept[1]),
                           torch.where(take, score, kept[2]), torch.where(take, now, kept[3]))
    return torch.where(back, kept[3], -1)


def _accepted(config: EditConfig, state: DecodeState, res, active: torch.Tensor) -> torch.Tensor:
    """The active rows whose edit pass passes the stop rules (every active row when none is set).
    With ``stop_on_growth`` it also keeps each active row's change count for the next pass."""
    if not config.stop_on_growth and config.max_change_fraction is None:
        return active
    n_changed = (res.replaced | res.deleted).sum(1) + res.inserted.sum(1)
    ok = active.clone()
    if config.stop_on_growth:
        last = state.extra.get("last_changes")
        if last is not None:
            ok &= n_changed <= last
        state.extra["last_changes"] = n_changed if last is None else torch.where(active, n_changed, last)
    if config.max_change_fraction is not None:
        ok &= n_changed <= config.max_change_fraction * state.lengths.clamp(min=1)
    return ok

