"""Numba edit distance and canonical edit scripts (core.align) against rapidfuzz and a plain-Python DP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from refinery.core.align import (DELETE, INSERT, KEEP, REPLACE, align_into, alignment, batch_alignment,
                                 batch_edit_scripts, batch_levenshtein, edit_script, levenshtein, pack)

SETTINGS = dict(deadline=None, derandomize=True, database=None)


# ----------------------------------------------------------------------------- helpers


def mutate(rng: np.random.Generator, seq: np.ndarray, rate: float, vocab: int) -> np.ndarray:
    """seq with about rate * len random deletions, replacements and insertions."""
    out = []
    for x in seq:
        r = rng.random()
        if r < rate / 3:
            continue
        if r < 2 * rate / 3:
            out.append(rng.integers(vocab))
        elif r < rate:
            out += [rng.integers(vocab), x]
        else:
            out.append(x)
    if rng.random() < rate:  # the gap at the end gets edits too
        out += list(rng.integers(0, vocab, rng.integers(1, 4)))
    return np.array(out, dtype=seq.dtype)


@st.composite
def pairs(draw, max_len: int = 300, vocabs: tuple[int, ...] = (3, 50_000)):
    """(draft, truth): unrelated, or truth = draft with random edits (the regime labels see)."""
    vocab = draw(st.sampled_from(vocabs))
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.integers(0, vocab, draw(st.integers(0, max_len))).astype(dtype)
    rate = draw(st.sampled_from([None, 0.02, 0.1, 0.3]))
    b = rng.integers(0, vocab, draw(st.integers(0, max_len))).astype(dtype) if rate is None \
        else mutate(rng, a, rate, vocab)[:max_len]
    return (a, b) if draw(st.booleans()) else (b, a)


def apply_script(a: np.ndarray, b: np.ndarray, ops: np.ndarray) -> list[int]:
    """Run (op, src, dst) rows over a, checking every dst is the output position it claims."""
    out, k = [], 0
    for i in range(len(a) + 1):
        while k < len(ops) and ops[k, 1] == i and ops[k, 0] == INSERT:
            assert ops[k, 2] == len(out)
            out.append(int(b[ops[k, 2]]))
            k += 1
        if i == len(a):
            break
        if k < len(ops) and ops[k, 1] == i and ops[k, 0] == DELETE:
            assert ops[k, 2] == len(out)
            k += 1
            continue
        if k < len(ops) and ops[k, 1] == i and ops[k, 0] == REPLACE:
            assert ops[k, 2] == len(out) and a[i] != b[ops[k, 2]]
            out.append(int(b[ops[k, 2]]))
            k += 1
            continue
        out.append(int(a[i]))
    assert k == len(ops), "rows out of order or unused"
    return out


def reference_alignment(a, b) -> tuple[list[int], int]:
    """Full DP matrix, backtrace from (n, m) taking the first optimal move of keep > replace > delete > insert."""
    n, m = len(a), len(b)
    d = [[i + j if i == 0 or j == 0 else 0 for j in range(m + 1)] for i in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    amap, i, j = [0] * n, n, m
    while i or j:
        if i and j and a[i - 1] == b[j - 1] and d[i - 1][j - 1] == d[i][j]:
            amap[i - 1] = j - 1  # keep
            i, j = i - 1, j - 1
        elif i and j and d[i - 1][j - 1] + 1 == d[i][j]:
            amap[i - 1] = j - 1  # replace
            i, j = i - 1, j - 1
        elif i and d[i - 1][j] + 1 == d[i][j]:
            amap[i - 1] = -1  # delete
            i -= 1
        else:
            j -= 1  # insert
    return amap, d[n][m]


# ----------------------------------------------------------------------------- properties


@settings(max_examples=250, **SETTINGS)
@given(pairs())
def test_distance_and_script_match_rapidfuzz(pair):
    a, b = pair
    dist = levenshtein(a, b)
    assert dist == Levenshtein.distance(a.tolist(), b.tolist())
    ops = edit_script(a, b)
    assert ops.dtype == np.int32 and ops.shape == (dist, 3)
    assert np.isin(ops[:, 0], [REPLACE, DELETE, INSERT]).all()
    assert apply_script(a, b, ops) == b.tolist()
    amap, dist2 = alignment(a, b)
    assert dist2 == dist and amap.dtype == np.int32 and amap.shape == a.shape


@settings(max_examples=300, **SETTINGS)
@given(pairs(max_len=24, vocabs=(2, 3, 5)))
def test_alignment_is_the_documented_canonical_one(pair):
    a, b = pair
    ref, dist = reference_alignment(a.tolist(), b.tolist())
    amap, got = alignment(a, b)
    assert got == dist and amap.tolist() == ref


@settings(max_examples=40, **SETTINGS)
@given(st.lists(pairs(max_len=120), min_size=0, max_size=12))
def test_batched_equals_single_pair(batch):
    a_flat, a_off = pack([a for a, _ in batch])
    b_flat, b_off = pack([b for _, b in batch])
    dist = batch_levenshtein(a_flat, a_off, b_flat, b_off)
    amap, dist2 = batch_alignment(a_flat, a_off, b_flat, b_off)
    ops, ops_off, dist3 = batch_edit_scripts(a_flat, a_off, b_flat, b_off)
    assert dist.tolist() == dist2.tolist() == dist3.tolist() == [levenshtein(a, b) for a, b in batch]
    assert ops_off.tolist() == [0, *np.cumsum(dist).tolist()]
    for p, (a, b) in enumerate(batch):
        assert amap[a_off[p]:a_off[p + 1]].tolist() == alignment(a, b)[0].tolist()
        assert np.array_equal(ops[ops_off[p]:ops_off[p + 1]], edit_script(a, b))


def test_scratch_growth_at_every_size():
    """Tiny starting scratch, so the wavefront table and its offsets grow at every possible level
    boundary (a growth that assumed the old table reached the new level's start once crashed)."""
    rng = np.random.default_rng(3)
    for t in range(400):
        vocab = (2, 3, 50_000)[t % 3]
        a = rng.integers(0, vocab, int(rng.integers(0, 120)))
        b = rng.integers(0, vocab, int(rng.integers(0, 120))) if t % 2 else mutate(rng, a, 0.2, vocab)
        want_map, want = alignment(a, b)
        amap = np.empty(len(a), np.int32)
        dist, table, offs = align_into(a, b, amap, np.empty(5 + t % 7, np.int32), np.empty(1 + t % 3, np.int64))
        assert dist == want == Levenshtein.distance(a.tolist(), b.tolist())
        assert amap.tolist() == want_map.tolist() and table.shape[0] >= 5


def test_large_batch_runs_in_parallel_chunks_and_matches():
    """More pairs than chunks, so every chunk reuses (and grows) its scratch across pairs."""
    rng = np.random.default_rng(0)
    truths = [rng.integers(0, 50_000, int(rng.integers(0, 400))) for _ in range(300)]
    drafts = [mutate(rng, t, 0.15, 50_000) for t in truths]
    a_flat, a_off = pack(drafts)
    b_flat, b_off = pack(truths)
    ops, ops_off, dist = batch_edit_scripts(a_flat, a_off, b_flat, b_off)
    for p, (a, b) in enumerate(zip(drafts, truths)):
        assert dist[p] == Levenshtein.distance(a.tolist(), b.tolist())
        assert apply_script(a, b, ops[ops_off[p]:ops_off[p + 1]]) == b.tolist()


# ----------------------------------------------------------------------------- tie-break by hand


@pytest.mark.parametrize("a, b, expected", [
    ([], [], []),
    ([1, 2], [1, 2], []),
    ([], [4, 5], [(INSERT, 0, 0), (INSERT, 0, 1)]),
    ([4, 5], [], [(DELETE, 0, 0), (DELETE, 1, 0)]),
    ([1], [2], [(REPLACE, 0, 0)]),
    # equal tokens: the survivor is matched as late as possible, so the edit lands first
    ([1, 1], [1], [(DELETE, 0, 0)]),
    ([1], [1, 1], [(INSERT, 0, 0)]),
    ([7, 1, 1, 8], [7, 1, 8], [(DELETE, 1, 1)]),
    # replace beats delete / insert at the end of the backtrace
    ([1, 2], [3], [(DELETE, 0, 0), (REPLACE, 1, 0)]),
    ([3], [1, 2], [(INSERT, 0, 0), (REPLACE, 0, 1)]),
    ([1, 2], [2, 1], [(REPLACE, 0, 0), (REPLACE, 1, 1)]),
    # delete beats insert: a[2] goes, and b[0] is inserted in front
    ([1, 2, 1], [2, 1, 2], [(INSERT, 0, 0), (DELETE, 2, 3)]),
    # only an insertion is optimal at the end
    ([1, 2, 3], [2, 3, 4], [(DELETE, 0, 0), (INSERT, 3, 2)]),
])
def test_tie_break_on_hand_made_cases(a, b, expected):
    ops = edit_script(np.array(a, np.int64), np.array(b, np.int64))
    assert [tuple(r) for r in ops.tolist()] == expected
    assert KEEP not in ops[:, 0]


def test_alignment_maps_survivors_and_deletions():
    amap, dist = alignment([7, 1, 1, 8], [7, 1, 8])
    assert dist == 1 and amap.tolist() == [0, -1, 1, 2]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("a, match", [
    (np.array([1.0, 2.0]), "1-D integer"),
    (np.array([[1, 2], [3, 4]]), "1-D integer"),
    (np.zeros((0, 3), np.int64), "1-D integer"),
    (np.array([True, False]), "1-D integer"),
    (["a", "b"], "1-D integer"),
    (np.array([2**63], np.uint64), "int64 range"),
])
def test_bad_tokens_are_rejected(a, match):
    with pytest.raises(ValueError, match=match):
        levenshtein(a, [1, 2])
    with pytest.raises(ValueError, match=match):
        edit_script([1, 2], a)


def test_empty_lists_are_fine():
    assert levenshtein([], []) == 0 and edit_script([], [3]).tolist() == [[INSERT, 0, 0]]


@pytest.mark.parametrize("offsets, match", [
    ([1, 3], "start at 0"),
    ([0, 2], "end at len"),
    ([0, 3, 2, 3], "never decrease"),
    ([], "B\\+1 >= 1"),
    ([[0, 3]], "1-D integer"),
    ([0.0, 3.0], "1-D integer"),
])
def test_bad_offsets_are_rejected(offsets, match):
    flat = np.array([1, 2, 3])
    for fn in (batch_levenshtein, batch_alignment, batch_edit_scripts):
        with pytest.raises(ValueError, match=match):
            fn(flat, np.array(offsets), flat, np.array([0, 3]))


def test_batches_of_different_size_are_rejected():
    flat = np.array([1, 2, 3])
    with pytest.raises(ValueError, match="differ in size: 2 vs 1"):
        batch_edit_scripts(flat, np.array([0, 1, 3]), flat, np.array([0, 3]))
    with pytest.raises(ValueError, match="1-D integer"):
        batch_levenshtein(flat.astype(float), np.array([0, 3]), flat, np.array([0, 3]))


# ----------------------------------------------------------------------------- compilation cache

_PROBE = """
import sys, numpy as np
from numba.core.registry import CPUDispatcher
import refinery.core.align as A
assert A.__file__.startswith(sys.argv[1]), A.__file__
a, b = np.array([1, 2, 3]), np.array([1, 3, 4])
if sys.argv[2] != "import":
    A.levenshtein(a, b)
if sys.argv[2] == "all":
    A.edit_script(a, b)
    import refinery.core.edit_labels as E
    fa, fb = A.pack([a, a]), A.pack([b, b])
    A.batch_levenshtein(*fa, *fb); A.batch_edit_scripts(*fa, *fb)
    E.edit_labels(a, b, delete_id=9, eos_id=0)
    E.batch_edit_labels_flat(*fa, *fb, delete_id=9, eos_id=0, return_scripts=True)
fns = [f for f in vars(A).values() if isinstance(f, CPUDispatcher)]
print(sum(sum(f.stats.cache_hits.values()) for f in fns), sum(sum(f.stats.cache_misses.values()) for f in fns),
      A.CACHE_ENABLED)
"""


def _probe(root: Path, what: str, cwd: Path, **env: str | None) -> tuple[int, int, bool]:
    """Import core.align from root in a fresh interpreter: (cache hits, cache misses, cache enabled).

    env overrides the environment; None removes a variable."""
    full = dict(os.environ, PYTHONPATH=str(root))
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    res = subprocess.run([sys.executable, "-c", _PROBE, str(root), what], cwd=cwd, env=full, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    hits, misses, ok = res.stdout.split()[-3:]
    return int(hits), int(misses), ok == "True"


def test_second_process_start_compiles_nothing(tmp_path):
    """In-tree cache of the checked-out package: whatever the first start compiled, the second loads."""
    root = Path(__file__).resolve().parents[2]
    if not _probe(root, "all", tmp_path)[2]:
        pytest.skip("no writable Numba cache location in this environment")
    hits, misses, ok = _probe(root, "all", tmp_path)
    assert ok and misses == 0 and hits >= 6, (hits, misses)


def _read_only_copy(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    pkg = site / "refinery" / "core"  # the installed layout: refinery/core/align.py
    pkg.mkdir(parents=True)
    (site / "refinery" / "__init__.py").write_text("")
    src = Path(__file__).resolve().parents[2] / "core"
    for name in ("__init__.py", "align.py"):
        shutil.copy(src / name, pkg / name)
    # chmod alone does not stop root; a plain file where __pycache__ would go stops everyone
    for d in (pkg, site / "refinery"):
        (d / "__pycache__").write_text("")
    for d in (pkg, site / "refinery", site):
        d.chmod(0o555)
    return site


def test_read_only_install_caches_in_the_user_directory(tmp_path):
    site = _read_only_copy(tmp_path)
    try:
        xdg = tmp_path / "xdg"
        first = _probe(site, "distance", tmp_path, XDG_CACHE_HOME=str(xdg), NUMBA_CACHE_DIR=None)
        second = _probe(site, "distance", tmp_path, XDG_CACHE_HOME=str(xdg), NUMBA_CACHE_DIR=None)
        assert first[1] > 0 and first[2], first
        assert second[1] == 0 and second[0] > 0, second
        assert list((xdg / "numba").rglob("*.nbi")), "nothing cached in the user directory"
        # NUMBA_CACHE_DIR, when set, takes precedence over both
        nc = tmp_path / "nc"
        assert _probe(site, "distance", tmp_path, XDG_CACHE_HOME=str(xdg), NUMBA_CACHE_DIR=str(nc))[1] > 0
        assert list(nc.rglob("*.nbi"))
        # nowhere writable: Numba would refuse cache=True at import; we import uncached instead
        blocked = tmp_path / "not-a-dir"
        blocked.write_text("")
        assert _probe(site, "import", tmp_path, XDG_CACHE_HOME=str(blocked), NUMBA_CACHE_DIR=None) == (0, 0, False)
    finally:
        for d in (site / "refinery" / "core", site / "refinery", site):
            d.chmod(0o755)
