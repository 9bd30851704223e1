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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from core.trace import StepRecord
from strategies.base import DecodeContext, DecodeState, ForwardOutput, ForwardRequest, Strategy, StrategyConfig
from strategies.masked import MaskedConfig, MaskedStrategy
from strategies.registry import register
from strategies.sampling import ban_tokens, log_probability_from_top, predict, probability_from_top


@dataclass(frozen=True)
class EditConfig(StrategyConfig):
    edit_passes: Optional[int] = None  # passes reserved for edits; None = round(edit_fraction * budget passes)
    edit_fraction: float = 0.25  # share of the passes given to edits when edit_passes is None
    block_length: Optional[int] = None  # mask phase: semi-AR block length; None = one block
    temperature: float = 0.0  # mask phase: Gumbel temperature
    stop_when_unchanged: bool = True  # a row stops once an edit pass changes nothing
    stop_on_growth: bool = False  # reject (and stop at) a pass that changes more than the row's previous pass
    max_change_fraction: Optional[float] = None  # reject (and stop at) a pass changing more than this share
    min_edit_confidence: Optional[float] = None  # an edit applies only where its head's probability reaches this
    keep_threshold: Optional[float] = None  # an edit applies only where its head gives the present text less than this
    insert_keep_threshold: Optional[float] = None  # the same bar for insertions only; None = keep_threshold
    revert_margin: Optional[float] = None  # go back (and stop) when the text scores lower than before by more
    revert_to: Literal["previous", "best"] = "previous"  # the earlier text compared and gone back to

    def check(self, gen_length: int, max_nfe: int) -> None:
        if self.edit_passes is not None and self.edit_passes < 0:
            raise ValueError(f"edit_passes={self.edit_passes} must be >= 0")
        if not 0.0 <= self.edit_fraction < 1.0:
            raise ValueError(f"edit_fraction={self.edit_fraction} must lie in [0, 1)")
        if self.max_change_fraction is not None and not 0.0 < self.max_change_fraction <= 1.0:
            raise ValueError(f"max_change_fraction={self.max_change_fraction} must lie in (0, 1]")
        if self.min_edit_confidence is not None and not 0.0 <= self.min_edit_confidence <= 1.0:
            raise ValueError(f"min_edit_confidence={self.min_edit_confidence} must lie in [0, 1]")
        for name in ("keep_threshold", "insert_keep_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"{name}={value} must lie in (0, 1]")
        if self.revert_margin is not None and self.revert_margin < 0.0:
            raise ValueError(f"revert_margin={self.revert_margin} must be >= 0")
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
    # The mask phase caches as ``masked`` does (dual only with blocks). Edit passes insert and delete, which
    # moves every region column, so they recompute the whole region (and the gap before it) on a cache of
    # the prompt alone: the loop refills it with a full pass when the edit phase starts.
    cache_modes = ("none", "prefix", "dual")

    def refuse_cache(self, mode: str) -> Optional[str]:
        if mode == "dual" and self.config.block_length is None:
            return ("the mask phase runs as one block (block_length=None) and edit passes may change every region "
                    "column, so a dual cache would keep nothing a prefix cache does not; set block_length or use "
                    "cache='prefix'")
        return super().refuse_cache(mode)

    def cache_window(self, ctx: DecodeContext, state: DecodeState) -> tuple[int, int]:
        if state.step < state.extra["mask_passes"]:
            return self._mask.cache_window(self._mask_ctx, state)
        return 0, ctx.gen_length

    def min_passes(self, gen_length: int) -> int:
        blocks = self.config.mask_config().num_blocks(gen_length)
        return blocks + (self.config.edit_passes if self.config.edit_passes is not None else 1)

    def begin(self, ctx: DecodeContext, state: DecodeState) -> None:
        M, E = self.config.split(ctx.max_nfe)
        if ctx.delete_id is None:
            raise ValueError("the edit strategy needs a delete token (config.delete_token_id)")
        has_masks = bool((state.x[:, ctx.prompt_width:] == ctx.mask_id).any())
        self._mask = MaskedStrategy(self.config.mask_config())
        self._mask_ctx = DecodeContext(**{**ctx.__dict__, "max_nfe": M})
        state.extra["mask_passes"] = M if has_masks else 0
        state.extra["last_pass"] = ctx.max_nfe - 1 if has_masks else E - 1
        if has_masks:
            self._mask.begin(self._mask_ctx, state)
        else:
            _strip(ctx, state)

    def request(self, ctx: DecodeContext, state: DecodeState) -> ForwardRequest:
        return ForwardRequest(next_head=state.step >= state.extra["mask_passes"])

    def sure_passes(self, ctx: DecodeContext, state: DecodeState) -> int:
        return self._mask.sure_passes(self._mask_ctx, state) if state.step < state.extra["mask_passes"] else 0

    def step(self, ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
        M = state.extra["mask_passes"]
        if state.step < M:
            record = self._mask.step(self._mask_ctx, state, out)
            if state.step == M - 1:  # mask phase over: strip padding, every row goes on to edit
                _strip(ctx, state)
                record.tokens, record.lengths = state.x[:, ctx.prompt_width:].clone(), state.lengths.clone()
                state.active = torch.full_like(state.active, state.step < state.extra["last_pass"])
            return record
        return self._edit(ctx, state, out)

    def _edit(self, ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
        P, charged = ctx.prompt_width, state.active
        region = state.x[:, P:]
        logits = ban_tokens(out.logits, (ctx.mask_id,))
        next_logits = ban_tokens(out.next_logits, (ctx.mask_id, ctx.delete_id))
        top, conf = predict(logits, 0.0, ctx.generators)
        reverted = _revert_worse(self.config, ctx, state, logits, top, conf)
        active = charged & (reverted < 0) if reverted is not None else charged  # a reverted row edits no more
        ntop, nconf = predict(next_logits, 0.0, ctx.generators)  # (B, L+1)
        cur, nxt = top, ntop
        tau = self.config.min_edit_confidence
        if tau is not None:  # an unsure head keeps the token (no replace / delete) and inserts nothing
            cur = torch.where(conf >= tau, cur, region)
            nxt = torch.where(nconf >= tau, nxt, torch.full_like(nxt, ctx.pad_id))
        rho = self.config.keep_threshold
        if rho is not None:  # a head that finds the present text likely enough leaves it alone
            cur = torch.where(probability_from_top(logits, region, top, conf) < rho, cur, region)
        rho_insert = self.config.insert_keep_threshold or rho
        if rho_insert is not None:  # nor a gap whose following token the next-token head finds likely enough
            gap = torch.arange(region.shape[1] + 1, device=region.device)
            following = torch.cat([region, torch.full_like(region[:, :1], ctx.eos_id)], dim=1)
            following = torch.where(gap[None, :] < state.lengths[:, None], following, ctx.eos_id)
            doubt = probability_from_top(next_logits, following, ntop, nconf) < rho_insert
            nxt = torch.where(doubt, nxt, torch.full_like(nxt, ctx.pad_id))
        from core.edit_labels import apply_edits  # lazy: decoding never needs the Numba alignment compiled

        res = apply_edits(region, state.lengths, cur, nxt[:, 1:], nxt[:, 0], delete_id=ctx.delete_id,
                          eos_id=ctx.eos_id, pad_id=ctx.pad_id)
        accept = _accepted(self.config, state, res, active)
        rows = accept[:, None]
        replaced, deleted, inserted = res.replaced & rows, res.deleted & rows, res.inserted & rows
        region.copy_(torch.where(rows, res.tokens, region))
        state.set_lengths(P, torch.where(accept, res.lengths, state.lengths))
        changed = replaced.any(1) | deleted.any(1) | inserted.any(1)
        more = state.step < state.extra["last_pass"]
        state.active = accept & more & (changed if self.config.stop_when_unchanged else True)
        return StepRecord(phase="edit", tokens=region.clone(), lengths=state.lengths.clone(), active=charged,
                          replaced=replaced, deleted=deleted, inserted=inserted, values=cur,
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


def _strip(ctx: DecodeContext, state: DecodeState) -> None:
    """Cut each row at its first end-of-text / pad token and take the padding out of attention; the
    result is the draft the edit passes start from (kept for ``GenerationResult.draft_tokens``)."""
    from core.decode import strip_padding

    region = state.x[:, ctx.prompt_width:]
    state.set_lengths(ctx.prompt_width, strip_padding(region, ctx.eos_id, ctx.pad_id))
    pos = torch.arange(region.shape[1], device=region.device)
    region.copy_(torch.where(pos[None, :] < state.lengths[:, None], region, torch.full_like(region, ctx.pad_id)))
    state.extra["draft"] = (region.clone(), state.lengths.clone())
