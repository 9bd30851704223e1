"""Per-pass records of a generation, and the trace that collects them.

A strategy returns one :class:`StepRecord` per forward pass. During decoding a record holds
device tensors (no host sync on the hot path); :meth:`Trace.compact` turns the whole trace
into a few flat numpy arrays at the end:

- ``tokens``: int32 (passes, B, L), the generation region after every pass;
- one (N, 4) int32 event table ``(pass, row, position, token)`` per event kind, positions
  counted in the region *before* the pass (``inserted`` counts gaps: gap g sits before
  position g);
- ``scores``: float32 (N,) aligned with ``unmasked`` (the score the strategy ranked by);
- ``reverted`` rows ``(pass, row, -1, since)``: in that pass the row went back to its region from
  before pass ``since`` (an edit rule that takes edits back); such a row has no other event there.

:meth:`Trace.replay` rebuilds every pass from the initial region and the events alone and
checks it against the stored tokens, so a trace cannot claim an edit it did not make.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

# StepRecord is defined beside the other shared types; re-exported here
from refinery.core.types import EVENT_KINDS, StepRecord  # noqa: F401

@dataclass
class CompactTrace:
    """The serialisable form of a trace (numpy only; saved with ``np.savez_compressed``, loaded without pickle)."""

    initial: np.ndarray  # (B, L) int32 region before the first pass
    initial_lengths: np.ndarray  # (B,) int32
    tokens: np.ndarray  # (S, B, L) int32
    lengths: np.ndarray  # (S, B) int32
    active: np.ndarray  # (S, B) bool
    phases: np.ndarray  # (S,) unicode
    events: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> (N, 4) int32 (pass, row, pos, token)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # aligned with events["unmasked"]
    mask_id: int = -1
    pad_id: int = -1
    eos_id: int = -1
    cache: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U7"))  # (S,) StepRecord.cache per pass; "" = none

    @property
    def num_passes(self) -> int:
        return int(self.tokens.shape[0])

    def save(self, path: str | Path) -> None:
        arrays = {f"event_{k}": v for k, v in self.events.items()}
        np.savez_compressed(
            path, initial=self.initial, initial_lengths=self.initial_lengths, tokens=self.tokens,
            lengths=self.lengths, active=self.active, phases=self.phases, scores=self.scores, cache=self.cache,
            ids=np.array([self.mask_id, self.pad_id, self.eos_id], np.int64), **arrays,
        )

    @classmethod
    def load(cls, path: str | Path) -> "CompactTrace":
        with np.load(path, allow_pickle=False) as z:
            events = {k[len("event_"):]: z[k] for k in z.files if k.startswith("event_")}
            mask_id, pad_id, eos_id = (int(v) for v in z["ids"])
            # traces saved before cached decoding existed ran every pass uncached
            cache = z["cache"] if "cache" in z.files else np.full(len(z["phases"]), "", "<U7")
            return cls(z["initial"], z["initial_lengths"], z["tokens"], z["lengths"], z["active"], z["phases"],
                       events, z["scores"], mask_id, pad_id, eos_id, cache)

    def row_events(self, step: int, row: int) -> dict[str, np.ndarray]:
        """kind -> (n, 2) (position, token) of one row in one pass."""
        out = {}
        for kind, ev in self.events.items():
            sel = (ev[:, 0] == step) & (ev[:, 1] == row)
            out[kind] = ev[sel][:, 2:]
        return out

    def region_before(self, step: int, row: int) -> np.ndarray:
        """Row ``row``'s recorded region before pass ``step`` (the initial canvas for step 0)."""
        if step == 0:
            return self.initial[row, : self.initial_lengths[row]]
        return self.tokens[step - 1, row, : self.lengths[step - 1, row]]

    def replay(self) -> np.ndarray:
        """Rebuild every pass from ``initial`` and the events; raise if any stored pass disagrees.

        Returns the final (B, L) region."""
        cur = self.initial.copy()
        lengths = self.initial_lengths.copy()
        B, L = cur.shape
        for s in range(self.num_passes):
            for b in range(B):
                ev = self.row_events(s, b)
                if len(ev.get("reverted", ())):
                    row = self.region_before(int(ev["reverted"][0, 1]), b)
                else:
                    row = _replay_row(cur[b, : lengths[b]], ev, self.mask_id)[:L]
                n = int(self.lengths[s, b])
                if self.phases[s] == "mask" and n < len(row) and _first_end(row, self.eos_id, self.pad_id) == n:
                    row = row[:n]  # end of the mask phase: cut at the first end-of-text / pad token
                new = np.full(L, self.pad_id, np.int32)
                new[: len(row)] = row
                if len(row) != self.lengths[s, b] or not np.array_equal(new[: len(row)], self.tokens[s, b, : len(row)]):
                    raise ValueError(f"trace pass {s}, row {b}: events do not reproduce the recorded tokens")
                cur[b], lengths[b] = self.tokens[s, b], len(row)
        return cur


def _first_end(row: np.ndarray, eos_id: int, pad_id: int) -> int:
    ends = np.flatnonzero(np.isin(row, (eos_id, pad_id)))
    return int(ends[0]) if len(ends) else len(row)


WalkItem = tuple[Optional[str], int, Optional[int]]  # (kind or None, token shown, old token or None)


def walk_pass(prev: np.ndarray, ev: dict[str, np.ndarray], mask_id: int) -> list[WalkItem]:
    """One row's pass read gap by gap, the one walk that replay and the app's pass view share.

    prev: the row's tokens before the pass; ev: its events (kind -> (n, 2) (position, token), positions in
    ``prev``). Returns (kind, token, old) for every token of the old and the new text in order: the token
    inserted in gap g (kind "inserted") comes before position g, then position g as deleted (its old token),
    replaced / unmasked (the new token and the old one), remasked (``mask_id`` and the old token) or untouched
    (kind None). A position with several point events counts as replaced, else unmasked, else remasked."""
    point = {kind: {int(p): int(t) for p, t in ev.get(kind, ())} for kind in ("replaced", "unmasked", "remasked")}
    deleted = {int(p) for p, _ in ev.get("deleted", ())}
    inserts = {int(g): int(t) for g, t in ev.get("inserted", ())}
    out: list[WalkItem] = []
    for g in range(len(prev) + 1):
        if g in inserts:
            out.append(("inserted", inserts[g], None))
        if g == len(prev):
            break
        old = int(prev[g])
        kind = next((k for k in ("replaced", "unmasked", "remasked") if g in point[k]), None)
        if g in deleted:
            out.append(("deleted", old, None))
        elif kind is None:
            out.append((None, old, None))
        else:
            out.append((kind, mask_id if kind == "remasked" else point[kind][g], old))
    return out


def _replay_row(prev: np.ndarray, ev: dict[str, np.ndarray], mask_id: int) -> np.ndarray:
    """Apply one row's events to its pre-pass tokens (positions refer to ``prev``): the walk minus deletions."""
    return np.asarray([t for kind, t, _ in walk_pass(prev, ev, mask_id) if kind != "deleted"], np.int32)


class Trace:
    """Collects StepRecords during a generation and compacts them afterwards."""

    def __init__(self, initial: torch.Tensor, initial_lengths: torch.Tensor, mask_id: int, pad_id: int,
                 eos_id: int = -1):
        self.initial = initial.detach().to("cpu", torch.int32)
        self.initial_lengths = initial_lengths.detach().to("cpu", torch.int32)
        self.mask_id, self.pad_id, self.eos_id = mask_id, pad_id, eos_id
        self.records: list[StepRecord] = []

    def append(self, record: StepRecord) -> None:
        # int32 on device first, so the copy to the host is a quarter of an int64 one.
        record.tokens = record.tokens.to(torch.int32)
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def compact(self) -> CompactTrace:
        recs = [r.detach_to("cpu") for r in self.records]
        B = self.initial.shape[0]
        L = max([self.initial.shape[1]] + [r.tokens.shape[1] for r in recs])  # a canvas that grew: pad to its width
        S = len(recs)
        initial = _widen(self.initial.numpy(), L, self.pad_id)
        tokens = (np.stack([_widen(r.tokens.numpy(), L, self.pad_id) for r in recs]) if S
                  else np.zeros((0, B, L), np.int32))
        lengths = np.stack([r.lengths.numpy().astype(np.int32) for r in recs]) if S else np.zeros((0, B), np.int32)
        active = np.stack([r.active.numpy().astype(bool) for r in recs]) if S else np.zeros((0, B), bool)
        events, scores = {}, []
        for kind in EVENT_KINDS:
            rows = []
            for s, r in enumerate(recs):
                m = getattr(r, kind)
                if m is None:
                    continue
                b, p = np.nonzero(m.numpy())
                vals = _event_values(kind, r, b, p, self.mask_id, tokens[s - 1] if s else initial)
                rows.append(np.stack([np.full_like(b, s), b, p, vals], 1).astype(np.int32))
                if kind == "unmasked":
                    sc = r.scores.float().numpy()[b, p] if r.scores is not None else np.full(len(b), np.nan)
                    scores.append(sc.astype(np.float32))
            events[kind] = np.concatenate(rows) if rows else np.zeros((0, 4), np.int32)
        reverts = []
        for s, r in enumerate(recs):
            if r.reverted is not None:
                b = np.flatnonzero(r.reverted.numpy() >= 0)
                reverts.append(np.stack([np.full_like(b, s), b, np.full_like(b, -1), r.reverted.numpy()[b]], 1))
        if reverts:
            events["reverted"] = np.concatenate(reverts).astype(np.int32)
        return CompactTrace(
            initial, self.initial_lengths.numpy(), tokens, lengths, active,
            np.array([r.phase for r in recs]), events,
            np.concatenate(scores) if scores else np.zeros(0, np.float32), self.mask_id, self.pad_id, self.eos_id,
            np.array([r.cache for r in recs], "<U7"),
        )


def _widen(tokens: np.ndarray, width: int, pad_id: int) -> np.ndarray:
    """(B, W) -> (B, width) with pad_id columns on the right (W <= width)."""
    if tokens.shape[1] == width:
        return tokens
    out = np.full((tokens.shape[0], width), pad_id, tokens.dtype)
    out[:, : tokens.shape[1]] = tokens
    return out


def _event_values(kind: str, rec: StepRecord, b, p, mask_id: int, prev: np.ndarray) -> np.ndarray:
    if kind == "unmasked":  # ``values`` when the pass also moved tokens (a draft compacted at its end)
        return (rec.values if rec.values is not None else rec.tokens).numpy()[b, p]
    if kind == "replaced":
        return rec.values.numpy()[b, p]
    if kind == "inserted":
        return rec.inserted_tokens.numpy()[b, p]
    return prev[b, p]  # remasked / deleted: the token that was there
