"""The parts of ME-DLM inference that the ``edit`` strategy can switch on (its ``paper`` preset).

ME-DLM (``test.py`` of its reference code) decodes in two phases; where it differs from this
project's defaults the edit strategy takes the rule from here:

* mask phase (``mask_phase="medlm"``, :func:`medlm_mask_begin` / :func:`medlm_mask_step`): greedy;
  the delete token is the only banned prediction (the mask id may be committed); positions are ranked
  by the predicted token's probability under a softmax without delete *and* pad, so a predicted pad
  scores 0 and is committed last; each pass commits ``n // M`` masks, one more on the first ``n % M``.
* draft (:func:`finish_draft`): ``draft_rule="strip_pads"`` removes pad tokens wherever they are (not
  only from the first one on); ``final_eot`` overwrites the draft's last token with end-of-turn when
  edit passes follow, so that ME-DLM's insertions (only ever *before* a token) can append before it.
* growth room (:func:`plan_room`, :func:`apply_with_room`): ``max_length`` caps prompt + answer per row
  (ME-DLM: 6144 for a whole packed batch); the canvas widens pass by pass as far as the rows grow.
"""

from __future__ import annotations

from typing import Optional

import torch

from refinery.core.types import DecodeContext, DecodeState, Draft, ForwardOutput, StepRecord, apply_edits, strip_padding
from refinery.strategies.sampling import NEG_INF, ban_tokens, select_topk, token_probability, transfer_counts


def plan_room(ctx: DecodeContext, state: DecodeState, max_length: int) -> None:
    """Each row's longest answer under ``max_length`` (its prompt counted), kept in ``state.extra["room"]`` (B,).
    The canvas is not widened here: :func:`apply_with_room` widens it when a pass needs the columns."""
    prompt_len = state.attention_mask[:, : ctx.prompt_width].sum(1)
    room = max_length - prompt_len
    if bool((room < state.lengths).any()):
        raise ValueError(f"max_length={max_length} leaves no room for gen_length={ctx.gen_length} after a prompt "
                         f"of {int(prompt_len.max())} tokens")
    state.extra["room"] = room


def grow_canvas(ctx: DecodeContext, state: DecodeState, width: int) -> None:
    """Widen the generation region to ``width`` columns of pad (outside attention); never narrows it."""
    extra = width - (state.x.shape[1] - ctx.prompt_width)
    if extra <= 0:
        return
    B = state.x.shape[0]
    state.x = torch.cat([state.x, torch.full((B, extra), ctx.pad_id, dtype=state.x.dtype, device=state.x.device)], 1)
    state.attention_mask = torch.cat([state.attention_mask, state.attention_mask.new_zeros(B, extra)], 1)
    state.set_lengths(ctx.prompt_width, state.lengths)


def apply_with_room(ctx: DecodeContext, state: DecodeState, cur: torch.Tensor, nxt: torch.Tensor,
                    allowed: torch.Tensor, **rule):
    """``apply_edits`` under the ``max_length`` cap, on a canvas that grows only as far as the rows do.

    cur (B, W), nxt and allowed (B, W+1) over the present canvas. A pass can at most double a row (plus
    one), so the edit is computed on 2W+1 columns (capped by the room); the canvas is then widened to the
    longest row and the result's masks are cut back to the pre-pass width W. The forward passes stay as
    wide as the texts, not as wide as the cap (ME-DLM: 6144)."""
    room = state.extra["room"]
    region = state.x[:, ctx.prompt_width:]
    W = region.shape[1]
    wide = max(W, min(int(room.max()), 2 * W + 1))

    def pad(t: torch.Tensor, value) -> torch.Tensor:  # (B, W + k) -> (B, wide + k)
        more = torch.full((t.shape[0], wide - W), value, dtype=t.dtype, device=t.device)
        return torch.cat([t, more], 1)

    res = apply_edits(pad(region, ctx.pad_id), state.lengths, pad(cur, ctx.pad_id), pad(nxt[:, 1:], ctx.pad_id),
                      nxt[:, 0], allowed=pad(allowed, False), room=room, delete_id=ctx.delete_id, eos_id=ctx.eos_id,
                      pad_id=ctx.pad_id, **rule)
    grow_canvas(ctx, state, int(torch.where(state.active, res.lengths, state.lengths).max()))  # stopped rows stay
    new_w = state.x.shape[1] - ctx.prompt_width
    res.tokens = res.tokens[:, :new_w]
    res.replaced, res.deleted = res.replaced[:, :W], res.deleted[:, :W]
    res.inserted, res.inserted_tokens = res.inserted[:, : W + 1], res.inserted_tokens[:, : W + 1]
    return res


def medlm_mask_begin(ctx: DecodeContext, state: DecodeState, passes: int) -> None:
    """Plan ME-DLM's mask phase: the masked region positions (B, W) and the commits per pass (B, passes)."""
    pending = state.x[:, ctx.prompt_width:] == ctx.mask_id
    state.extra["medlm_mask"] = (pending, transfer_counts(pending.sum(1), passes))


def medlm_mask_step(ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
    """One pass of ME-DLM's mask phase. Which positions still wait is tracked apart from the tokens, because
    a committed mask id stays in the text as an ordinary token (ME-DLM bans only the delete token)."""
    pending, counts = state.extra["medlm_mask"]
    logits = ban_tokens(out.logits, (ctx.delete_id,))  # (B, W, V)
    x0 = logits.argmax(-1)
    # ranking: probability without pad, so a predicted pad scores exactly 0 and waits for the last commits
    conf = token_probability(ban_tokens(logits, (ctx.pad_id,)), x0)
    select = select_topk(torch.where(pending, conf, NEG_INF), counts[:, state.step])
    region = state.x[:, ctx.prompt_width:]
    region.copy_(torch.where(select, x0, region))
    pending &= ~select
    return StepRecord(phase="mask", tokens=region.clone(), lengths=state.lengths.clone(), unmasked=select, scores=conf)


def finish_draft(draft_rule: str, final_eot: bool, ctx: DecodeContext, state: DecodeState,
                 record: Optional[StepRecord] = None) -> None:
    """Turn the mask phase's region into the draft the edit passes start from, in place.

    ``draft_rule`` "cut": each row ends before its first end-of-text / pad token; "strip_pads": every pad
    token is removed (ME-DLM). ``final_eot``: the last draft token becomes end-of-turn (``eot_id``, else
    ``eos_id``). Padding leaves the attention; the draft is kept in ``state.draft``. When the
    tokens move (strip or forced end-of-turn) and ``record`` is the pass that made the draft, the record
    gets the removals as ``deleted`` and the forced token as ``replaced`` so that the trace replays."""
    P = ctx.prompt_width
    region = state.x[:, P:]
    W = region.shape[1]
    pos = torch.arange(W, device=region.device)[None, :]
    valid = pos < state.lengths[:, None]
    if draft_rule == "cut":
        keep = pos < strip_padding(region, ctx.eos_id, ctx.pad_id)[:, None]
    else:
        keep = valid & (region != ctx.pad_id)
    lengths = keep.sum(1)
    values = region.clone()
    forced = torch.zeros_like(keep)
    if final_eot:  # the last kept position (pre-compaction coordinates) of every non-empty row
        eot = ctx.eot_id if ctx.eot_id is not None else ctx.eos_id
        last = torch.where(keep, pos, -1).max(1).values
        forced = (pos == last[:, None]) & keep & (region != eot)
        values = torch.where(forced, eot, values)
    moves = draft_rule != "cut" or final_eot
    slot = torch.where(keep, torch.cumsum(keep.long(), 1) - 1, W)  # compact the kept tokens to the left
    out = torch.full((region.shape[0], W + 1), ctx.pad_id, dtype=region.dtype, device=region.device)
    out.scatter_(1, slot, torch.where(keep, values, ctx.pad_id))
    region.copy_(out[:, :W])
    state.set_lengths(P, lengths)
    state.draft = Draft(region.clone(), lengths.clone())
    if record is not None:
        record.tokens, record.lengths = region.clone(), lengths.clone()
        if moves:
            record.deleted, record.replaced, record.values = valid & ~keep, forced, values
