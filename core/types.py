"""The types the one decode loop and the strategies share, and the one edit rule both sides apply.

Strategies (``strategies/``) and the loop (``core.decode``) both import this module and it imports
neither, so neither side needs a lazy import of the other: the loop hands a strategy a
:class:`DecodeContext`, a :class:`DecodeState` and a :class:`ForwardOutput`, the strategy answers with a
:class:`ForwardRequest` and a :class:`StepRecord`. :func:`apply_edits` is ME-DLM's parallel
replace / delete / insert pass: the ``edit`` strategy decodes with it and ``core.edit_labels`` builds the
training labels it consumes (its rule is described there); it needs torch only, never the Numba alignment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

EVENT_KINDS = ("unmasked", "remasked", "replaced", "deleted", "inserted")

# Cache modes of the one loop (core.decode): none recomputes the whole canvas every pass; prefix keeps the
# keys and values of every column before the strategy's window; dual also keeps those after it.
CACHE_MODES = ("none", "prefix", "dual")


@dataclass
class DecodeContext:
    """Fixed facts of one generation call."""

    prompt_width: int  # P: columns of the (left-padded) prompt block
    gen_length: int  # L: columns of the generation region
    max_nfe: int  # ceil(budget * L): forward passes each row may be charged
    mask_id: int
    eos_id: int
    pad_id: int
    delete_id: Optional[int]
    eot_id: Optional[int]
    generators: list  # one seeded torch.Generator per row: all randomness of the call comes from these


@dataclass
class Draft:
    """The region as a strategy's refinement phase found it (``edit``: the mask phase's output)."""

    tokens: torch.Tensor  # (B, W) the draft, right-padded with pad_id
    lengths: torch.Tensor  # (B,) draft lengths


@dataclass
class DecodeState:
    """The mutable canvas. ``x`` is (B, P+L): prompt block then generation region."""

    x: torch.Tensor  # (B, P+L) int64
    attention_mask: torch.Tensor  # (B, P+L) bool: False for prompt padding and for region positions >= lengths
    lengths: torch.Tensor  # (B,) current generation-region lengths
    active: torch.Tensor  # (B,) rows that still need passes
    nfe: torch.Tensor  # (B,) passes charged so far
    step: int = 0
    extra: dict = dataclasses.field(default_factory=dict)  # strategy-owned per-call state
    dense: bool = False  # attention_mask is all True: the model is called without one (flash attention)
    # set by a strategy with a refinement phase when that phase starts; the loop returns it with the result
    draft: Optional[Draft] = None

    def region(self, P: int) -> torch.Tensor:
        """(B, L) view of the generation region."""
        return self.x[:, P:]

    def set_lengths(self, P: int, lengths: torch.Tensor) -> None:
        """New region lengths; positions at or past a row's length leave the attention mask."""
        self.lengths = lengths
        pos = torch.arange(self.x.shape[1] - P, device=self.x.device)
        self.attention_mask[:, P:] = pos[None, :] < lengths[:, None]
        self.dense = False


@dataclass
class ForwardRequest:
    """What the strategy needs from the next model call."""

    next_head: bool = False  # also compute the ME-DLM next-token head
    uncond: bool = False  # also run the prompt-masked canvas (classifier-free guidance)

    @property
    def nfe_cost(self) -> int:
        return 2 if self.uncond else 1


@dataclass
class ForwardOutput:
    """Model outputs over the generation region, owned by the strategy for this pass (edit them in place).

    logits (B, n, V) for the region columns [offset, offset + n): the whole region (offset 0, n = L) unless
    the pass ran on a KV cache, which computes only the window the strategy declared
    (:meth:`Strategy.cache_window`); next_logits (B, n+1, V) or None, where next_logits[:, g] predicts
    gap offset + g (gap 0 is before the first region token, read at the last prompt position);
    uncond_logits (B, n, V) or None."""

    logits: torch.Tensor
    next_logits: Optional[torch.Tensor] = None
    uncond_logits: Optional[torch.Tensor] = None
    offset: int = 0  # region column of logits[:, 0]

    def widen(self, values: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        """(B, n) per-position values computed from these logits -> (B, L): ``outside`` (B, L) with
        ``values`` over the computed columns. The whole-region case returns ``values`` itself (no copy)."""
        n = values.shape[1]
        if self.offset == 0 and n == outside.shape[1]:
            return values
        out = outside.clone()
        out[:, self.offset:self.offset + n] = values
        return out


@dataclass
class StepRecord:
    """What one pass did. Masks are (B, L) bool over the pre-pass region, ``inserted`` is (B, L+1) over gaps.

    ``values`` (B, L) holds the new token of each replaced position (and, in a mask pass that also moves
    tokens, of each unmasked one, in pre-pass coordinates); ``inserted_tokens`` (B, L+1) the
    token put in each gap; ``scores`` (B, L) the per-position score the strategy ranked by.
    """

    phase: str  # "mask" or "edit"
    tokens: torch.Tensor  # (B, L) region after the pass
    lengths: torch.Tensor  # (B,) region length after the pass
    # (B,) rows charged for this pass. Owned by the loop, which sets it after ``step`` returns (a strategy
    # leaves it None: which rows a pass charged is the loop's bookkeeping, not the strategy's)
    active: Optional[torch.Tensor] = None
    unmasked: Optional[torch.Tensor] = None
    remasked: Optional[torch.Tensor] = None
    replaced: Optional[torch.Tensor] = None
    deleted: Optional[torch.Tensor] = None
    inserted: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
    inserted_tokens: Optional[torch.Tensor] = None
    scores: Optional[torch.Tensor] = None
    reverted: Optional[torch.Tensor] = None  # (B,) long: the row went back to its text before that pass; -1 = not
    # KV cache of the pass (set by the loop): "" = no cache in use; "refresh" = a full pass that (re)filled the
    # cache; "prefix" / "dual" = only the strategy's window was computed, the other columns read from the cache
    cache: str = ""

    def detach_to(self, device: str | torch.device = "cpu") -> "StepRecord":
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return StepRecord(**moved)

    def counts(self) -> dict[str, int]:
        """Events of each kind in this pass, and rows that went back to an earlier text (host sync: use off
        the hot path)."""
        counts = {k: int(getattr(self, k).sum()) if getattr(self, k) is not None else 0 for k in EVENT_KINDS}
        return {**counts, "reverted": int((self.reverted >= 0).sum()) if self.reverted is not None else 0}


def strip_padding(tokens: torch.Tensor, eos_id: int, pad_id: Optional[int] = None) -> torch.Tensor:
    """(B, L) -> (B,) lengths: the region up to (excluding) the first end-of-text / pad token."""
    stop = tokens == eos_id
    if pad_id is not None:
        stop |= tokens == pad_id
    L = tokens.shape[1]
    first = torch.where(stop, torch.arange(L, device=tokens.device), L)
    return first.min(dim=1).values


# ----------------------------------------------------------------------------- apply_edits


@dataclass
class EditResult:
    """One parallel edit pass over B rows of width W (pre-edit coordinates for the masks)."""

    tokens: torch.LongTensor  # (B, W) edited rows, right-padded with pad_id
    lengths: torch.LongTensor  # (B,) new lengths (clipped to W)
    replaced: torch.BoolTensor  # (B, W) pre-edit positions whose token changed (not deleted)
    deleted: torch.BoolTensor  # (B, W) pre-edit positions deleted
    inserted: torch.BoolTensor  # (B, W+1) pre-edit gaps that received a token; gap g is before position g
    inserted_tokens: torch.LongTensor  # (B, W+1) the token inserted in each gap (pad_id where none)
    capped: Optional[torch.BoolTensor] = None  # (B,) rows that lost insertions to ``room`` (None: no room given)


def _following(cur_pred: torch.Tensor, keep: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, W+1): for gap g, the cur_pred of the first kept position >= g, or eos_id if none."""
    bsz, width = cur_pred.shape
    idx = torch.arange(width, device=cur_pred.device).expand(bsz, width)
    idx = torch.where(keep, idx, torch.full_like(idx, width))
    # Reverse cumulative min: first kept position at or after each column.
    first = torch.flip(torch.cummin(torch.flip(idx, [1]), dim=1).values, [1])
    first = torch.cat([first, torch.full_like(first[:, :1], width)], dim=1)
    padded = torch.cat([cur_pred, torch.full_like(cur_pred[:, :1], eos_id)], dim=1)
    return torch.gather(padded, 1, first)


def apply_edits(tokens: torch.Tensor, lengths: torch.Tensor, cur_pred: torch.Tensor, next_pred: torch.Tensor,
                gap0_pred: Optional[torch.Tensor] = None, *, delete_id: int, eos_id: int, pad_id: int,
                gaps: str = "all", insert_specials: bool = False, allowed: Optional[torch.Tensor] = None,
                room: Optional[torch.Tensor] = None) -> EditResult:
    """One parallel replace / delete / insert pass (rule in the module docstring); pure tensor ops.

    tokens, cur_pred, next_pred: (B, W) int64; lengths: (B,); gap0_pred: (B,) or None (no
    insertion before position 0). Positions >= lengths[b] are padding and ignored. A row that
    grows past W is truncated to its first W tokens (``lengths`` clipped to W); the masks still
    describe every edit of the pass in pre-edit coordinates.
    gaps: "all" (this project's rule) or "before_kept" (ME-DLM's); insert_specials: eos / pad / delete
    may be inserted (ME-DLM); allowed: (B, W+1) bool, gaps that may receive a token at all (None = every
    gap); room: (B,) longest each row may become, the first insertions from the left kept (ME-DLM's
    length cap) and ``capped`` set for rows that lost some.
    """
    if tokens.dim() != 2 or cur_pred.shape != tokens.shape or next_pred.shape != tokens.shape:
        raise ValueError(f"tokens, cur_pred and next_pred must share one (B, W) shape; got {tuple(tokens.shape)}, "
                         f"{tuple(cur_pred.shape)}, {tuple(next_pred.shape)}")
    bsz, width = tokens.shape
    dev = tokens.device
    lengths = lengths.to(dev, torch.long)
    valid = torch.arange(width, device=dev) < lengths[:, None]
    deleted = valid & (cur_pred == delete_id)
    keep = valid & ~deleted
    replaced = keep & (cur_pred != tokens)

    gap_pred = torch.cat([torch.full_like(tokens[:, :1], pad_id) if gap0_pred is None
                          else gap0_pred.to(dev, torch.long).view(bsz, 1), next_pred], dim=1)  # (B, W+1)
    if gaps == "all":
        gap_valid = torch.arange(width + 1, device=dev) <= lengths[:, None]
        inserted = gap_valid & (gap_pred != _following(cur_pred, keep, eos_id))
    elif gaps == "before_kept":  # ME-DLM: gap g exists iff token g survives, and is compared with its new value
        no_gap = torch.zeros_like(keep[:, :1])
        inserted = torch.cat([keep, no_gap], 1) & (gap_pred != torch.cat([cur_pred, gap_pred[:, -1:]], 1))
    else:
        raise ValueError(f"gaps={gaps!r} must be 'all' or 'before_kept'")
    if not insert_specials:
        for special in (eos_id, pad_id, delete_id):
            inserted &= gap_pred != special
    if gap0_pred is None:  # no prediction for the gap before position 0: nothing enters it
        inserted[:, 0] = False
    if allowed is not None:
        inserted &= allowed
    capped = None
    if room is not None:  # keep the first (room - survivors) insertions of each row, as ME-DLM's cap does
        over = inserted & (torch.cumsum(inserted.long(), 1) > (room.to(dev) - keep.sum(1))[:, None])
        capped, inserted = over.any(1), inserted & ~over
    inserted_tokens = torch.where(inserted, gap_pred, torch.full_like(gap_pred, pad_id))

    # Interleave gap g and position g into one stream of 2W+1 slots, then compact it with a
    # cumsum; slots that hold nothing (and tokens past W) are scattered into a trash column.
    present = torch.zeros(bsz, 2 * width + 1, dtype=torch.bool, device=dev)
    present[:, 0::2] = inserted
    present[:, 1::2] = keep
    stream = torch.empty(bsz, 2 * width + 1, dtype=torch.long, device=dev)
    stream[:, 0::2] = gap_pred
    stream[:, 1::2] = cur_pred
    pos = torch.cumsum(present.long(), dim=1) - 1
    pos = torch.where(present & (pos < width), pos, torch.full_like(pos, width))
    out = torch.full((bsz, width + 1), pad_id, dtype=torch.long, device=dev)
    out.scatter_(1, pos, torch.where(present, stream, torch.full_like(stream, pad_id)))
    new_len = present.sum(dim=1).clamp(max=width)
    return EditResult(out[:, :width], new_len, replaced, deleted, inserted, inserted_tokens, capped)
