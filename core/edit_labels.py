"""ME-DLM edit labels from (draft, truth) and the parallel edit rule that consumes them.

Two heads read a draft of n tokens. The *current* head says what each draft token should be
(itself, a replacement, or ``delete_id``); the *next-token* head says, for the gap after each
token, what should be inserted there. At inference (:func:`apply_edits`) one pass

  * deletes position i where ``cur[i] == delete_id`` and otherwise sets the token to ``cur[i]``;
  * inserts ``next[i]`` into the gap after position i iff it differs from the *following* token's
    current prediction (following = the next non-deleted position's ``cur``, or ``eos_id`` past the
    end) and is not eos / pad / delete; the gap before position 0 is predicted by the next-token
    head at the last prompt position (``gap0``). At most one token enters a gap per pass.

  ME-DLM's own rule (``gaps="before_kept", insert_specials=True``, its ``test.py``): a gap exists only
  before each surviving token (none before a deleted one, none after the last token), a token enters
  it iff it differs from that token's new value, and any token may enter (eos, pad, delete included).
  ``room`` caps each row's length: the insertions past it are dropped, rightmost first.

Labels (what :func:`edit_labels` trains towards), from the canonical alignment of
:mod:`core.align` (``amap[i] = j`` survives as truth token j, ``-1`` deleted):

  * ``cur_labels[i] = truth[amap[i]]`` or ``delete_id``.
  * ``next_labels[i]`` = the first truth token inserted in the gap after draft position i;
    "no insertion" is encoded as the token that will actually follow there, the target of the next
    surviving draft token, or ``eos_id`` when none survives. Several insertions in one gap: the
    first is labelled and later passes insert the rest.
  * ``gap0_label``: the same for the gap before position 0 (empty truth -> ``eos_id``).
  * ``ignore_index`` appears only with ``ignore_deleted_gaps=True``: gaps right after a deleted
    token are then left untrained. By default they are trained to "no insertion", because an
    optimal script never inserts next to a deletion (the pair would be one replacement) and an
    untrained head there would fire spurious insertions.

Ambiguity and its canonical fix. "Insert X" and "no insertion" read the same when X equals the
following target, e.g. draft [a, b] -> truth [a, a, b]: the backtrace keeps the draft ``a`` as
the *second* truth ``a`` and inserts the first one before it, which the rule reads as "nothing to
insert". This can happen in any gap. :func:`normalize_alignment` therefore walks the survivors
left to right and re-maps each one onto the FIRST truth token after the previous survivor that
has the same value as its target. A survivor keeps its label (same value), so the cost and the
minimality of the script are unchanged; the insertions it skipped move to the gap after it (an
optimal script never has a deletion there). Afterwards no insertion run contains its following
target at all, which gives two guarantees:
  1. every labelled insertion differs from its following target, so one oracle pass performs all
     replacements, all deletions and the first insertion of every run;
  2. the result of that pass is a subsequence of the truth whose earliest embedding is exactly
     "the same alignment minus those first insertions", which is what normalisation returns for
     it, so later passes continue the same runs.
Hence repeated oracle passes reach the truth in exactly max(1, L) passes when draft != truth, L
being the longest insertion run of the normalised alignment (no final no-op pass is needed).
Truth tokens must not be ``delete_id``; a truth that contains ``eos_id`` or ``pad_id`` can be
labelled, but :func:`apply_edits` never inserts those tokens, so such insertions never happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from refinery.core.align import (align_pair, as_ragged, as_tokens, batch_labels_kernel, check_pairs, dynamic,
                                 labels_into, n_chunks, normalize_alignment, pack, scan_truth, scripts_from_alignment)
from refinery.core.types import EditResult, apply_edits  # noqa: F401  (the rule lives with the shared decode types)


@dataclass
class EditLabels:
    """Labels of one (draft, truth) pair; n = len(draft)."""

    cur_labels: np.ndarray  # (n,) int32: kept token, replacement, or delete_id
    next_labels: np.ndarray  # (n,) int32: gap after position i (insertion or following target)
    gap0_label: int  # gap before position 0
    distance: int  # Levenshtein distance draft -> truth


@dataclass
class BatchEditLabels:
    """Labels of B ragged pairs, laid out like the draft flat array (offsets (B+1,))."""

    cur_labels: np.ndarray  # (N,) int32
    next_labels: np.ndarray  # (N,) int32
    gap0_labels: np.ndarray  # (B,) int32
    distances: np.ndarray  # (B,) int64
    offsets: np.ndarray  # (B+1,) int64, the draft offsets
    ops: Optional[np.ndarray] = None  # (K, 3) int32 canonical scripts (see core.align), if requested
    ops_offsets: Optional[np.ndarray] = None  # (B+1,) int64


# ----------------------------------------------------------------------------- label API


def _check_ids(b_flat: np.ndarray, name: str, **ids: int) -> None:
    for key, value in ids.items():
        if not -2**31 <= int(value) < 2**31:
            raise ValueError(f"{key}={value} does not fit the int32 label arrays")
    problem = scan_truth(b_flat, ids["delete_id"])
    if problem == 1:
        raise ValueError(f"{name} contains delete_id={ids['delete_id']}; a truth token cannot be the delete marker")
    if problem == 2:
        raise ValueError(f"{name} holds token ids outside int32, which the label arrays use")


def canonical_alignment(draft: Sequence[int] | np.ndarray, truth: Sequence[int] | np.ndarray) -> tuple[np.ndarray, int]:
    """Normalised canonical alignment the labels are read from: (amap (n,) int32, distance)."""
    a, b = as_tokens(draft, "draft"), as_tokens(truth, "truth")
    amap = np.empty(a.shape[0], np.int32)
    dist = align_pair(a, b, amap)
    normalize_alignment(b, amap)
    return amap, int(dist)


def edit_labels(draft: Sequence[int] | np.ndarray, truth: Sequence[int] | np.ndarray, *, delete_id: int,
                eos_id: int, ignore_index: int = -100, ignore_deleted_gaps: bool = False) -> EditLabels:
    """Labels of one pair: draft (n,), truth (m,) token ids -> :class:`EditLabels`."""
    a, b = as_tokens(draft, "draft"), as_tokens(truth, "truth")
    _check_ids(b, "truth", delete_id=delete_id, eos_id=eos_id, ignore_index=ignore_index)
    amap, dist = canonical_alignment(a, b)
    cur = np.empty(a.shape[0], np.int32)
    nxt = np.empty(a.shape[0], np.int32)
    gap0 = labels_into(b, amap, cur, nxt, delete_id, eos_id, ignore_index, ignore_deleted_gaps)
    return EditLabels(cur, nxt, int(gap0), dist)


def batch_edit_labels_flat(draft_flat: np.ndarray, draft_offsets: np.ndarray, truth_flat: np.ndarray,
                           truth_offsets: np.ndarray, *, delete_id: int, eos_id: int, ignore_index: int = -100,
                           ignore_deleted_gaps: bool = False, return_scripts: bool = False) -> BatchEditLabels:
    """Labels of B ragged pairs (flat + offsets), parallel over pairs.

    With ``return_scripts`` the canonical (un-normalised) edit scripts come along at the cost of
    one more linear pass, so scripts and labels share a single alignment.
    """
    a_flat, a_off = as_ragged(draft_flat, draft_offsets, "draft")
    b_flat, b_off = as_ragged(truth_flat, truth_offsets, "truth")
    check_pairs(a_off, b_off)
    _check_ids(b_flat, "truth_flat", delete_id=delete_id, eos_id=eos_id, ignore_index=ignore_index)
    raw_map = np.empty(a_flat.shape[0] if return_scripts else 0, np.int32)
    cur, nxt, gap0, dist = dynamic(batch_labels_kernel, a_flat, a_off, b_flat, b_off, raw_map, delete_id, eos_id,
                                   ignore_index, ignore_deleted_gaps, n_chunks(a_off.shape[0] - 1))
    ops = ops_off = None
    if return_scripts:
        ops, ops_off = scripts_from_alignment(a_flat, a_off, b_flat, b_off, raw_map, dist)
    return BatchEditLabels(cur, nxt, gap0, dist, a_off, ops, ops_off)


def batch_edit_labels(drafts: Sequence[Sequence[int] | np.ndarray], truths: Sequence[Sequence[int] | np.ndarray], *,
                      delete_id: int, eos_id: int, ignore_index: int = -100,
                      ignore_deleted_gaps: bool = False) -> list[EditLabels]:
    """List-of-arrays convenience wrapper around :func:`batch_edit_labels_flat`."""
    if len(drafts) != len(truths):
        raise ValueError(f"drafts and truths differ in length: {len(drafts)} vs {len(truths)}")
    a_flat, a_off = pack(drafts, "drafts")
    b_flat, b_off = pack(truths, "truths")
    out = batch_edit_labels_flat(a_flat, a_off, b_flat, b_off, delete_id=delete_id, eos_id=eos_id,
                                 ignore_index=ignore_index, ignore_deleted_gaps=ignore_deleted_gaps)
    return [EditLabels(out.cur_labels[s:t], out.next_labels[s:t], int(out.gap0_labels[p]), int(out.distances[p]))
            for p, (s, t) in enumerate(zip(a_off[:-1], a_off[1:]))]


# ----------------------------------------------------------------------------- apply_edits


def apply_edits_reference(row: Sequence[int], length: int, cur_pred: Sequence[int], next_pred: Sequence[int],
                          gap0_pred: Optional[int], *, delete_id: int, eos_id: int, pad_id: int,
                          width: int, gaps: str = "all", insert_specials: bool = False,
                          room: Optional[int] = None) -> dict:
    """Plain-Python twin of :func:`apply_edits` for one row (used by the tests).

    Returns a dict with ``tokens`` (list, unpadded, truncated to width), ``replaced``, ``deleted``
    (lists of pre-edit positions) and ``inserted`` (dict gap -> token).
    """
    keep = [i for i in range(length) if cur_pred[i] != delete_id]
    out, inserted = [], {}
    left = None if room is None else room - len(keep)  # insertions the length cap still allows
    for g in range(length + 1):
        tok = gap0_pred if g == 0 else next_pred[g - 1]
        if gaps == "all":
            following = next((cur_pred[i] for i in keep if i >= g), eos_id)
        else:  # only the gap before a surviving token, compared with that token
            following = cur_pred[g] if g < length and cur_pred[g] != delete_id else None
        fires = tok is not None and (gaps == "all" or following is not None) and tok != following
        if fires and not insert_specials:
            fires = tok not in (eos_id, pad_id, delete_id)
        if fires and left is not None:
            fires, left = left > 0, left - 1
        if fires:
            inserted[g] = int(tok)
            out.append(int(tok))
        if g < length and cur_pred[g] != delete_id:
            out.append(int(cur_pred[g]))
    return {"tokens": out[:width],
            "replaced": [i for i in keep if cur_pred[i] != row[i]],
            "deleted": [i for i in range(length) if cur_pred[i] == delete_id],
            "inserted": inserted}
