"""Levenshtein distance and canonical minimal edit scripts between token-id sequences (Numba).

ME-DLM learns from the minimal edit script that turns a flawed draft ``a`` (length n) into the
truth ``b`` (length m). Drafts are close to their targets (a few to ~20% edits), so we use the
Landau-Vishkin diagonal-transition formulation instead of the O(nm) dynamic-programming matrix:

    L[e][d] = the furthest row i on diagonal d = j - i with D[i][j] <= e,

filled level by level (e = 0, 1, ...) until L[e][m - n] == n. Each level costs one cell per live
diagonal plus the length of the exact-match "slide", so the whole table is O(k^2 + n) for
distance k on a large vocabulary instead of O(nm). Memory is the table, O(min(k^2, k (n + m)))
int32; that suits the lengths we train on (a few thousand tokens at most).

Canonical script (the tie-break every function here follows):
    Backtrace from (n, m) to (0, 0); at each cell take the first move that stays optimal in the
    order  keep > replace > delete > insert.
"keep" is always optimal when a[i-1] == b[j-1] (a standard property of unit-cost Levenshtein), so
the rule only chooses among edits. Because the backtrace runs from the end, ties put deletions
and insertions as early in the sequence as possible. In an optimal script a deletion and an
insertion never share the gap between two surviving draft tokens (they would merge into one
replacement), so the script is fully described by an alignment ``amap`` (n,) int32:
``amap[i] = j`` if draft token i survives as truth token j (kept or replaced) and ``-1`` if it is
deleted; truth tokens that no survivor maps to are inserted just before the next survivor.

Edit scripts use rapidfuzz's ``editops`` conventions, one row per operation, ``(op, src, dst)``:
REPLACE a[src] -> b[dst]; DELETE a[src] (dst = where it would have been in b); INSERT b[dst]
before a[src]. Rows are ordered by src, then dst.

Batched functions take ragged inputs as a flat array plus int64 offsets (B + 1,), pair p being
``flat[offsets[p]:offsets[p + 1]]``, and run in parallel over pairs (``numba.prange``).
Every kernel is compiled with ``cache=True`` (through :func:`_jit`), so a second process start
loads machine code instead of recompiling. Numba looks for a writable cache in this order:
``$NUMBA_CACHE_DIR``, ``core/__pycache__`` next to this file, then the per-user cache
(``$XDG_CACHE_HOME/numba`` or ``~/.cache/numba``); a read-only install therefore caches in the
user's directory. Where none is writable, Numba refuses ``cache=True`` at import time; we then
compile without a cache (logged once) rather than fail to import.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numba
import numpy as np
from numba import njit, prange

log = logging.getLogger(__name__)

KEEP, REPLACE, DELETE, INSERT = 0, 1, 2, 3
CACHE_ENABLED = True  # False once Numba found no writable cache location (see module doc)


def _jit(parallel: bool = False):
    """``njit(cache=True)``, or uncached when Numba finds no writable cache location."""

    def wrap(fn):
        global CACHE_ENABLED
        if CACHE_ENABLED:
            try:
                return njit(cache=True, parallel=parallel)(fn)
            except RuntimeError as exc:  # "cannot cache function ...: no locator available"
                CACHE_ENABLED = False
                log.warning("Numba cache disabled, kernels will compile on every start: %s. Set NUMBA_CACHE_DIR "
                            "to a writable directory to fix this.", exc)
        return njit(parallel=parallel)(fn)

    return wrap


# ----------------------------------------------------------------------------- wavefronts
#
# A level e is stored as [S, S, L[e][lo], ..., L[e][hi], S, S] (S = sentinel) in one int32
# buffer, so every diagonal of level e+1 (at most one more diagonal on each side) can read its
# three predecessors without range checks. Hot loops index the buffer directly instead of calling
# helpers with array arguments: each such call costs atomic reference-count updates in Numba,
# which made an early version 4x slower.

_SENTINEL = -2  # below any real row, even after the +1 of a replace or delete move


@_jit()
def _diag_range(e, n, m):
    return max(-e, -n), min(e, m)


@_jit()
def _next_level(a, b, buf, pstart, plo, cstart, lo, hi):
    """Fill level e (diagonals lo..hi at buf[cstart:]) from level e-1 (plo.. at buf[pstart:]).

    Moves into row i of diagonal d: replace from (i-1) on d, delete from (i-1) on d+1, insert
    from i on d-1. Clipping a candidate to the matrix edge is exact because D changes by at most
    1 per row or column step; then the row slides along exact matches.
    """
    n, m = a.shape[0], b.shape[0]
    buf[cstart - 2] = buf[cstart - 1] = _SENTINEL
    buf[cstart + hi - lo + 1] = buf[cstart + hi - lo + 2] = _SENTINEL
    for d in range(lo, hi + 1):
        k = pstart + d - plo
        best = max(buf[k], buf[k + 1]) + 1
        if buf[k - 1] > best:
            best = buf[k - 1]
        lim = min(n, m - d)
        if best > lim:
            best = lim
        while best < lim and a[best] == b[best + d]:
            best += 1
        buf[cstart + d - lo] = best


@_jit()
def _first_level(a, b, buf):
    """Level 0 (the common prefix) at buf[2], framed by sentinels; returns its row."""
    n, m = a.shape[0], b.shape[0]
    i = 0
    while i < n and i < m and a[i] == b[i]:
        i += 1
    buf[0] = buf[1] = buf[3] = buf[4] = _SENTINEL
    buf[2] = i
    return i


@_jit()
def _wavefronts(a, b, table, offs):
    """Landau-Vishkin table into reusable scratch (grown when too small).

    Returns (distance k, table int32, offs int64); level e covers diagonals
    ``_diag_range(e, n, m)`` and starts at ``table[offs[e]]``.
    """
    n, m = a.shape[0], b.shape[0]
    target = m - n
    row0 = _first_level(a, b, table)
    offs[0] = 2
    e = 0
    if target == 0 and row0 == n:
        return 0, table, offs
    while True:
        e += 1
        plo = max(-(e - 1), -n)
        lo, hi = _diag_range(e, n, m)
        cstart = offs[e - 1] + (min(e - 1, m) - plo + 1) + 4
        if e + 1 > offs.shape[0]:
            grown = np.empty(2 * offs.shape[0], np.int64)
            grown[: offs.shape[0]] = offs
            offs = grown
        if cstart + hi - lo + 3 > table.shape[0]:
            grown32 = np.empty(2 * (cstart + hi - lo + 3), np.int32)
            grown32[: table.shape[0]] = table  # may end before cstart: level e-1 ends at cstart - 3
            table = grown32
        offs[e] = cstart
        _next_level(a, b, table, offs[e - 1], plo, cstart, lo, hi)
        if lo <= target <= hi and table[cstart + target - lo] == n:
            return e, table, offs


@_jit()
def _distance(a, b):
    """Distance only: two rolling wavefront levels, O(n + m) memory."""
    n, m = a.shape[0], b.shape[0]
    target = m - n
    half = n + m + 5
    buf = np.empty(2 * half, np.int32)
    if target == 0 and _first_level(a, b, buf) == n:
        return 0
    _first_level(a, b, buf)
    pstart, cstart = 2, half + 2
    e = 0
    while True:
        e += 1
        lo, hi = _diag_range(e, n, m)
        _next_level(a, b, buf, pstart, max(-(e - 1), -n), cstart, lo, hi)
        if lo <= target <= hi and buf[cstart + target - lo] == n:
            return e
        pstart, cstart = cstart, pstart


@_jit()
def new_scratch():
    """Reusable (table, offs) buffers for :func:`align_into`."""
    return np.empty(4096, np.int32), np.empty(128, np.int64)


@_jit()
def align_into(a, b, amap, table, offs):
    """Canonical backtrace (keep > replace > delete > insert) into amap (n,).

    a (n,), b (m,) int64; table/offs from :func:`new_scratch`. Returns (distance, table, offs),
    the buffers possibly grown, for reuse on the next pair. A move to cell (r, r + d) costs one
    edit iff D[r][r + d] <= e - 1, i.e. iff L[e-1][d] >= r: D never decreases along a diagonal.
    """
    n, m = a.shape[0], b.shape[0]
    dist, table, offs = _wavefronts(a, b, table, offs)
    i, j, e = n, m, dist
    while i > 0 or j > 0:
        if i > 0 and j > 0 and a[i - 1] == b[j - 1]:
            i -= 1
            j -= 1
            amap[i] = j
            continue
        # Level e-1 read through its sentinel frame: out-of-range diagonals read as unreachable.
        plo, phi = _diag_range(e - 1, n, m)
        d = j - i
        row_rep = table[offs[e - 1] + d - plo] if plo - 1 <= d <= phi + 1 else _SENTINEL
        row_del = table[offs[e - 1] + d + 1 - plo] if plo - 1 <= d + 1 <= phi + 1 else _SENTINEL
        if i > 0 and j > 0 and row_rep >= i - 1:
            i -= 1
            j -= 1
            amap[i] = j
        elif i > 0 and row_del >= i - 1:
            i -= 1
            amap[i] = -1
        else:
            j -= 1
        e -= 1
    return dist, table, offs


@_jit()
def align_pair(a, b, amap):
    """Canonical alignment of one pair into amap (n,) with fresh scratch buffers; returns the distance."""
    table, offs = new_scratch()
    return align_into(a, b, amap, table, offs)[0]


@_jit()
def chunk_bounds(nb, c, nchunks):
    """Pairs [start, stop) of chunk c: prange runs over chunks so each reuses one scratch."""
    return c * nb // nchunks, (c + 1) * nb // nchunks


def n_chunks(nb: int) -> int:
    """How many chunks to split nb pairs into (a few per thread, so uneven pairs balance out).

    The chunked kernels hand chunks out one at a time (``set_parallel_chunksize(1)``): Numba's
    default splits a prange evenly between threads up front, so one slow thread (long pairs, or a
    core shared with another process) would hold up the whole batch.
    """
    return max(1, min(nb, 8 * numba.get_num_threads()))


def dynamic(kernel, *args, chunksize: int = 1):
    """Run a prange kernel handing out ``chunksize`` iterations at a time (Numba's setting is per
    calling thread; it is set here rather than inside the kernel, which would make it uncacheable)."""
    old = numba.set_parallel_chunksize(chunksize)
    try:
        return kernel(*args)
    finally:
        numba.set_parallel_chunksize(old)


@_jit()
def _write_ops(a, b, amap, ops):
    """Expand an alignment into (op, src, dst) rows; returns how many rows were written."""
    n, m = a.shape[0], b.shape[0]
    k = 0
    j = 0  # next truth index not yet accounted for
    for i in range(n + 1):
        jt = amap[i] if i < n else m
        if i < n and jt < 0:
            ops[k, 0], ops[k, 1], ops[k, 2] = DELETE, i, j
            k += 1
            continue
        while j < jt:
            ops[k, 0], ops[k, 1], ops[k, 2] = INSERT, i, j
            k += 1
            j += 1
        if i < n:
            if a[i] != b[jt]:
                ops[k, 0], ops[k, 1], ops[k, 2] = REPLACE, i, jt
                k += 1
            j = jt + 1
    return k


# ----------------------------------------------------------------------------- batched kernels


@_jit(parallel=True)
def _batch_distance(a_flat, a_off, b_flat, b_off):
    nb = a_off.shape[0] - 1
    out = np.empty(nb, np.int64)
    for p in prange(nb):
        out[p] = _distance(a_flat[a_off[p] : a_off[p + 1]], b_flat[b_off[p] : b_off[p + 1]])
    return out


@_jit(parallel=True)
def _batch_align(a_flat, a_off, b_flat, b_off, nchunks):
    nb = a_off.shape[0] - 1
    amap = np.empty(a_flat.shape[0], np.int32)
    dist = np.empty(nb, np.int64)
    for c in prange(nchunks):
        table, offs = new_scratch()
        start, stop = chunk_bounds(nb, c, nchunks)
        for p in range(start, stop):
            s, t = a_off[p], a_off[p + 1]
            dist[p], table, offs = align_into(a_flat[s:t], b_flat[b_off[p] : b_off[p + 1]], amap[s:t], table, offs)
    return amap, dist


@_jit(parallel=True)
def _batch_ops(a_flat, a_off, b_flat, b_off, amap, ops_off):
    nb = a_off.shape[0] - 1
    ops = np.empty((ops_off[nb], 3), np.int32)
    for p in prange(nb):
        s, t = a_off[p], a_off[p + 1]
        _write_ops(a_flat[s:t], b_flat[b_off[p] : b_off[p + 1]], amap[s:t], ops[ops_off[p] : ops_off[p + 1]])
    return ops


# ----------------------------------------------------------------------------- label kernels
#
# The ME-DLM label kernels behind core.edit_labels (scheme documented there) live here, next to
# the alignment they call: Numba's on-disk cache only notices edits to a function's own file, so
# keeping callers and callees in one module keeps cached machine code from going stale.


@_jit()
def normalize_alignment(b: np.ndarray, amap: np.ndarray) -> None:
    """In place: map each survivor onto the first equal truth token after the previous survivor.

    This removes "insert X right before a token whose target is X" (see core.edit_labels).

    b: (m,) truth; amap: (n,) int32 alignment (see module doc). Linear in n + m.
    """
    prev = -1  # truth index of the previous survivor
    for s in range(amap.shape[0]):
        j = amap[s]
        if j < 0:
            continue
        x = prev + 1
        while b[x] != b[j]:  # stops at j at the latest
            x += 1
        amap[s] = x
        prev = x


@_jit()
def labels_into(b, amap, cur, nxt, delete_id, eos_id, ignore_index, ignore_deleted_gaps):
    """Fill cur/nxt (n,) from a normalised alignment; return the gap-0 label."""
    follow = eos_id  # target of the next survivor to the right
    follow_j = b.shape[0]  # its truth index
    for i in range(amap.shape[0] - 1, -1, -1):
        j = amap[i]
        if j >= 0:
            cur[i] = b[j]
            nxt[i] = b[j + 1] if j + 1 < follow_j else follow
            follow = b[j]
            follow_j = j
        else:
            cur[i] = delete_id
            nxt[i] = ignore_index if ignore_deleted_gaps else follow
    return b[0] if follow_j > 0 else follow


@_jit()
def scan_truth(x, delete_id):
    """0 if fine, 1 if some x[i] == delete_id, 2 if some x[i] does not fit the int32 labels."""
    for i in range(x.shape[0]):
        if x[i] == delete_id:
            return 1
        if x[i] < -2147483648 or x[i] > 2147483647:
            return 2
    return 0


@_jit(parallel=True)
def batch_labels_kernel(a_flat, a_off, b_flat, b_off, raw_map, delete_id, eos_id, ignore_index,
                        ignore_deleted_gaps, nchunks):
    """Align, normalise and label every pair; raw_map (N,) or (0,) receives the canonical alignments."""
    nb = a_off.shape[0] - 1
    # int32 halves the fresh pages these outputs fault in, which dominates short pairs.
    cur = np.empty(a_flat.shape[0], np.int32)
    nxt = np.empty(a_flat.shape[0], np.int32)
    gap0 = np.empty(nb, np.int32)
    dist = np.empty(nb, np.int64)
    keep_raw = raw_map.shape[0] > 0
    for c in prange(nchunks):
        table, offs = new_scratch()
        amap = np.empty(256, np.int32)
        start, stop = chunk_bounds(nb, c, nchunks)
        for p in range(start, stop):
            s, t = a_off[p], a_off[p + 1]
            a, b = a_flat[s:t], b_flat[b_off[p] : b_off[p + 1]]
            if t - s > amap.shape[0]:
                amap = np.empty(2 * (t - s), np.int32)
            pmap = amap[: t - s]
            dist[p], table, offs = align_into(a, b, pmap, table, offs)
            if keep_raw:
                raw_map[s:t] = pmap
            normalize_alignment(b, pmap)
            gap0[p] = labels_into(b, pmap, cur[s:t], nxt[s:t], delete_id, eos_id, ignore_index, ignore_deleted_gaps)
    return cur, nxt, gap0, dist


# ----------------------------------------------------------------------------- python API


def as_tokens(x: Sequence[int] | np.ndarray, name: str = "tokens") -> np.ndarray:
    """Validate a 1-D integer token sequence and return it as contiguous int64."""
    arr = np.asarray(x)
    if arr.ndim == 1 and arr.size == 0:  # [] arrives as float64
        return np.zeros(0, np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds token ids above the int64 range")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_ragged(flat: np.ndarray, offsets: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a flat+offsets ragged batch: offsets (B+1,) start at 0, never decrease, end at len(flat)."""
    flat = as_tokens(flat, f"{name}_flat")
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.shape[0] < 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"{name}_offsets must be a 1-D integer array with B+1 >= 1 entries, got shape "
                         f"{offsets.shape} dtype {offsets.dtype}")
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets[0] != 0 or offsets[-1] != flat.shape[0] or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{name}_offsets must start at 0, never decrease and end at len({name}_flat)="
                         f"{flat.shape[0]}; got first={offsets[0]}, last={offsets[-1]}")
    return flat, offsets


def pack(seqs: Sequence[Sequence[int] | np.ndarray], name: str = "seqs") -> tuple[np.ndarray, np.ndarray]:
    """List of 1-D token sequences -> (flat int64, offsets int64 (B+1,))."""
    arrs = [as_tokens(s, f"{name}[{i}]") for i, s in enumerate(seqs)]
    offsets = np.zeros(len(arrs) + 1, np.int64)
    np.cumsum([a.shape[0] for a in arrs], out=offsets[1:])
    flat = np.concatenate(arrs) if arrs else np.zeros(0, np.int64)
    return flat.astype(np.int64, copy=False), offsets


def unpack(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Inverse of :func:`pack` (views into ``flat``)."""
    return [flat[offsets[p] : offsets[p + 1]] for p in range(offsets.shape[0] - 1)]


def check_pairs(a_off: np.ndarray, b_off: np.ndarray) -> None:
    """Refuse draft and truth batches (offsets (B+1,)) of different sizes."""
    if a_off.shape[0] != b_off.shape[0]:
        raise ValueError(f"draft and truth batches differ in size: {a_off.shape[0] - 1} vs {b_off.shape[0] - 1} pairs")


def levenshtein(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """Unit-cost Levenshtein distance between two token sequences."""
    return int(_distance(as_tokens(a, "a"), as_tokens(b, "b")))


def alignment(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> tuple[np.ndarray, int]:
    """Canonical alignment of draft a (n,) to truth b (m,): (amap (n,) int32, distance); see module doc."""
    a, b = as_tokens(a, "a"), as_tokens(b, "b")
    amap = np.empty(a.shape[0], np.int32)
    return amap, int(align_pair(a, b, amap))


def edit_script(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> np.ndarray:
    """Canonical minimal edit script from a to b: (distance, 3) int32 rows (op, src, dst)."""
    a, b = as_tokens(a, "a"), as_tokens(b, "b")
    amap = np.empty(a.shape[0], np.int32)
    ops = np.empty((align_pair(a, b, amap), 3), np.int32)
    _write_ops(a, b, amap, ops)
    return ops


def batch_levenshtein(a_flat: np.ndarray, a_offsets: np.ndarray, b_flat: np.ndarray,
                      b_offsets: np.ndarray) -> np.ndarray:
    """Distances (B,) int64 for B ragged pairs (flat + offsets), in parallel over pairs."""
    a_flat, a_offsets = as_ragged(a_flat, a_offsets, "a")
    b_flat, b_offsets = as_ragged(b_flat, b_offsets, "b")
    check_pairs(a_offsets, b_offsets)
    return dynamic(_batch_distance, a_flat, a_offsets, b_flat, b_offsets, chunksize=16)


def batch_alignment(a_flat: np.ndarray, a_offsets: np.ndarray, b_flat: np.ndarray,
                    b_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical alignments: (amap flat int32 laid out like a_flat, distances (B,) int64)."""
    a_flat, a_offsets = as_ragged(a_flat, a_offsets, "a")
    b_flat, b_offsets = as_ragged(b_flat, b_offsets, "b")
    check_pairs(a_offsets, b_offsets)
    return dynamic(_batch_align, a_flat, a_offsets, b_flat, b_offsets, n_chunks(a_offsets.shape[0] - 1))


def scripts_from_alignment(a_flat: np.ndarray, a_offsets: np.ndarray, b_flat: np.ndarray, b_offsets: np.ndarray,
                           amap: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand batched alignments into edit scripts: (ops (K, 3) int32, ops_offsets (B+1,) int64)."""
    ops_off = np.zeros(distances.shape[0] + 1, np.int64)
    np.cumsum(distances, out=ops_off[1:])
    return dynamic(_batch_ops, a_flat, a_offsets, b_flat, b_offsets, amap, ops_off, chunksize=16), ops_off


def batch_edit_scripts(a_flat: np.ndarray, a_offsets: np.ndarray, b_flat: np.ndarray,
                       b_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical scripts for B ragged pairs: (ops (K, 3) int32, ops_offsets (B+1,), distances (B,))."""
    a_flat, a_offsets = as_ragged(a_flat, a_offsets, "a")
    b_flat, b_offsets = as_ragged(b_flat, b_offsets, "b")
    check_pairs(a_offsets, b_offsets)
    amap, dist = dynamic(_batch_align, a_flat, a_offsets, b_flat, b_offsets, n_chunks(a_offsets.shape[0] - 1))
    ops, ops_off = scripts_from_alignment(a_flat, a_offsets, b_flat, b_offsets, amap, dist)
    return ops, ops_off, dist
