"""ME-DLM edit labels (core.edit_labels): hand-made cases, oracle round trips, apply_edits vs its reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refinery.core.align import align_pair, batch_edit_scripts, labels_into, pack
from refinery.core.edit_labels import apply_edits, apply_edits_reference, batch_edit_labels, batch_edit_labels_flat, \
    canonical_alignment, edit_labels

PAD, EOS, DEL, IGN = 0, 1, 2, -100  # real tokens are >= 3
SETTINGS = dict(deadline=None, derandomize=True, database=None)


def labels(draft, truth, **kw):
    lab = edit_labels(np.array(draft, np.int64), np.array(truth, np.int64), delete_id=DEL, eos_id=EOS, **kw)
    return lab.cur_labels.tolist(), lab.next_labels.tolist(), lab.gap0_label


def raw_labels(draft, truth):
    """Labels read straight off the canonical alignment, without normalize_alignment (the broken scheme)."""
    a, b = np.array(draft, np.int64), np.array(truth, np.int64)
    amap = np.empty(len(a), np.int32)
    align_pair(a, b, amap)
    cur, nxt = np.empty(len(a), np.int32), np.empty(len(a), np.int32)
    gap0 = labels_into(b, amap, cur, nxt, DEL, EOS, IGN, False)
    return cur.tolist(), nxt.tolist(), int(gap0)


def pad_rows(rows: list, width: int, fill: int = PAD) -> torch.Tensor:
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, :len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return out


def one_pass(rows: list[list[int]], labs: list[tuple]) -> list[list[int]]:
    """One batched apply_edits pass with the given (cur, next, gap0) labels per row."""
    width = max(1, max(len(r) for r in rows)) + 4
    cur = pad_rows([c for c, _, _ in labs], width, fill=7)  # junk past each length: must be ignored
    nxt = pad_rows([n for _, n, _ in labs], width, fill=9)
    res = apply_edits(pad_rows(rows, width), torch.tensor([len(r) for r in rows]), cur, nxt,
                      torch.tensor([g for _, _, g in labs]), delete_id=DEL, eos_id=EOS, pad_id=PAD)
    assert (res.lengths < width).all(), "test width too small"
    return [res.tokens[r, :res.lengths[r]].tolist() for r in range(len(rows))]


def longest_insertion_run(draft, truth) -> int:
    """Longest run of consecutive insertions in the normalised canonical script the labels come from."""
    amap, _ = canonical_alignment(np.array(draft, np.int64), np.array(truth, np.int64))
    survivors = [-1, *[j for j in amap.tolist() if j >= 0], len(truth)]
    return max(b - a - 1 for a, b in zip(survivors, survivors[1:]))


def passes_to_truth(drafts, truths, label_fn=labels, limit: int = 64) -> list[int | None]:
    """Oracle loop: relabel and apply (batched) until each row equals its truth; None if it never does."""
    rows, done = [list(d) for d in drafts], [0 if list(d) == list(t) else None for d, t in zip(drafts, truths)]
    for k in range(1, limit + 1):
        todo = [i for i, d in enumerate(done) if d is None]
        if not todo:
            break
        new = one_pass([rows[i] for i in todo], [label_fn(rows[i], truths[i]) for i in todo])
        for i, row in zip(todo, new):
            if row == rows[i]:
                done[i] = -1  # stuck: a fixed point that is not the truth
            rows[i] = row
            if row == list(truths[i]):
                done[i] = k
    return [None if d == -1 else d for d in done]


# ----------------------------------------------------------------------------- hand-made labels


@pytest.mark.parametrize("draft, truth, cur, nxt, gap0", [
    ([5, 6, 7], [5, 6, 7], [5, 6, 7], [6, 7, EOS], 5),
    ([5, 6, 7], [5, 8, 7], [5, 8, 7], [8, 7, EOS], 5),  # replace
    ([5, 6, 7], [5, 7], [5, DEL, 7], [7, 7, EOS], 5),  # delete: its gap says "no insertion" (7 follows)
    ([5, 7], [5, 6, 7], [5, 7], [6, EOS], 5),  # insert
    ([5, 7], [5, 6, 4, 7], [5, 7], [6, EOS], 5),  # two insertions: only the first is labelled
    ([5], [5, 6], [5], [6], 5),  # insert at the end
    ([5], [4, 5], [5], [EOS], 4),  # insert at the start (gap 0)
    ([5, 6], [6], [DEL, 6], [6, EOS], 6),  # deleting the first token
    ([5, 6], [], [DEL, DEL], [EOS, EOS], EOS),  # empty truth
    ([], [4, 5], [], [], 4),  # empty draft: everything enters through gap 0
    ([], [], [], [], EOS),
    # the gap-0 ambiguity: the raw backtrace keeps draft 5 as truth[1] and inserts truth[0]=5 before it,
    # which reads as "no insertion"; normalised, draft 5 is truth[0] and the second 5 goes after it
    ([5, 6], [5, 5, 6], [5, 6], [5, EOS], 5),
    ([5, 6], [5, 6, 6], [5, 6], [6, 6], 5),  # same inside the sequence
])
def test_hand_made_labels(draft, truth, cur, nxt, gap0):
    assert labels(draft, truth) == (cur, nxt, gap0)
    one = batch_edit_labels([np.array(draft, np.int64)], [np.array(truth, np.int64)], delete_id=DEL, eos_id=EOS)[0]
    assert (one.cur_labels.tolist(), one.next_labels.tolist(), one.gap0_label) == (cur, nxt, gap0)


def test_ignore_deleted_gaps():
    assert labels([5, 6, 7], [5, 7], ignore_deleted_gaps=True) == ([5, DEL, 7], [7, IGN, EOS], 5)
    assert labels([5, 6], [], ignore_deleted_gaps=True, ignore_index=-7) == ([DEL, DEL], [-7, -7], EOS)


def test_raw_alignment_is_ambiguous_and_normalisation_fixes_it():
    draft, truth = [5, 6], [5, 5, 6]
    assert raw_labels(draft, truth) == ([5, 6], [6, EOS], 5)  # gap 0 "inserts" 5 before a 5: a no-op
    assert passes_to_truth([draft], [truth], raw_labels) == [None]
    assert passes_to_truth([draft], [truth]) == [1]


def test_bad_label_inputs():
    with pytest.raises(ValueError, match="delete_id"):
        edit_labels([3], [3, DEL], delete_id=DEL, eos_id=EOS)
    with pytest.raises(ValueError, match="int32"):
        edit_labels([3], [3, 2**40], delete_id=DEL, eos_id=EOS)
    with pytest.raises(ValueError, match="int32"):
        edit_labels([3], [3], delete_id=2**40, eos_id=EOS)
    with pytest.raises(ValueError, match="1-D integer"):
        edit_labels([3.5], [3], delete_id=DEL, eos_id=EOS)
    with pytest.raises(ValueError, match="differ in length"):
        batch_edit_labels([[3]], [], delete_id=DEL, eos_id=EOS)
    flat = np.array([3, 4])
    with pytest.raises(ValueError, match="end at len"):
        batch_edit_labels_flat(flat, np.array([0, 1]), flat, np.array([0, 2]), delete_id=DEL, eos_id=EOS)


# ----------------------------------------------------------------------------- oracle round trips


def _round_trip(drafts, truths):
    got = passes_to_truth(drafts, truths)
    for d, t, k in zip(drafts, truths, got):
        assert k is not None, f"{d} -> {t} never reaches the truth"
        # exactly max(1, L) passes: one per insertion of the longest run, and one for any other edit
        assert k == (0 if list(d) == list(t) else max(1, longest_insertion_run(d, t))), (d, t, k)


def test_round_trip_exhaustive_binary():
    """Every pair of sequences over 2 tokens up to length 4 (961 pairs): all reach the truth."""
    seqs = [list(s) for n in range(5) for s in itertools.product([3, 4], repeat=n)]
    pairs = list(itertools.product(seqs, seqs))
    raw = passes_to_truth([d for d, _ in pairs], [t for _, t in pairs], raw_labels)
    assert sum(k is None for k in raw) > 0.1 * len(pairs)  # the un-normalised scheme gets stuck often
    _round_trip([d for d, _ in pairs], [t for _, t in pairs])


def test_round_trip_random_small_vocab():
    rng = np.random.default_rng(0)
    drafts, truths = [], []
    for _ in range(1500):
        vocab = int(rng.integers(1, 5))
        drafts.append(rng.integers(3, 3 + vocab, int(rng.integers(0, 12))).tolist())
        truths.append(rng.integers(3, 3 + vocab, int(rng.integers(0, 12))).tolist())
    _round_trip(drafts, truths)


def test_round_trip_reports_pass_count_of_long_runs():
    assert passes_to_truth([[5]], [[5, 5, 3]]) == [2]
    assert passes_to_truth([[]], [[3, 4, 5, 6]]) == [4]
    assert passes_to_truth([[3, 9, 9, 9]], [[3]]) == [1]  # deletions all happen in one pass


def test_one_pass_cannot_do_better_than_the_normalised_run():
    """[5] -> [5, 5, 3]: the raw script's runs are 1 long, yet no single pass of the rule reaches the truth,
    so the bound is the run length of the normalised script (here 2), not of the raw one."""
    vocab = [3, 5, EOS, DEL]
    hits = [(c, n, g) for c, n, g in itertools.product(vocab, vocab, vocab)
            if one_pass([[5]], [([c], [n], g)])[0] == [5, 5, 3]]
    assert hits == []


def test_batch_labels_equal_single_pair_labels_and_carry_the_scripts():
    rng = np.random.default_rng(1)
    drafts = [rng.integers(3, 8, int(rng.integers(0, 40))) for _ in range(64)]
    truths = [rng.integers(3, 8, int(rng.integers(0, 40))) for _ in range(64)]
    a_flat, a_off = pack(drafts)
    b_flat, b_off = pack(truths)
    out = batch_edit_labels_flat(a_flat, a_off, b_flat, b_off, delete_id=DEL, eos_id=EOS, return_scripts=True)
    for p, (d, t) in enumerate(zip(drafts, truths)):
        s, e = a_off[p], a_off[p + 1]
        one = edit_labels(d, t, delete_id=DEL, eos_id=EOS)
        assert out.cur_labels[s:e].tolist() == one.cur_labels.tolist()
        assert out.next_labels[s:e].tolist() == one.next_labels.tolist()
        assert out.gap0_labels[p] == one.gap0_label and out.distances[p] == one.distance
    ops, ops_off, dist = batch_edit_scripts(a_flat, a_off, b_flat, b_off)
    assert np.array_equal(out.ops, ops) and np.array_equal(out.ops_offsets, ops_off)
    assert out.cur_labels.dtype == np.int32 and out.next_labels.dtype == np.int32


# ----------------------------------------------------------------------------- apply_edits vs reference


@st.composite
def edit_batches(draw):
    """Random rows, lengths (0..W, junk past them) and predictions (biased to keep / delete / specials)."""
    bsz, width = draw(st.integers(1, 5)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vocab = int(rng.integers(4, 8))
    tokens = torch.as_tensor(rng.integers(3, vocab, (bsz, width)))
    lengths = torch.as_tensor(rng.integers(0, width + 1, bsz))
    choice = rng.random((bsz, width))
    cur = torch.as_tensor(rng.integers(0, vocab, (bsz, width)))  # specials included
    cur = torch.where(torch.as_tensor(choice < 0.5), tokens, cur)
    cur = torch.where(torch.as_tensor(choice > 0.85), torch.full_like(cur, DEL), cur)
    nxt = torch.as_tensor(rng.integers(0, vocab, (bsz, width)))
    gap0 = None if draw(st.booleans()) else torch.as_tensor(rng.integers(0, vocab, bsz))
    return tokens, lengths, cur, nxt, gap0


@settings(max_examples=300, **SETTINGS)
@given(edit_batches())
def test_apply_edits_matches_reference(batch):
    tokens, lengths, cur, nxt, gap0 = batch
    width = tokens.shape[1]
    res = apply_edits(tokens, lengths, cur, nxt, gap0, delete_id=DEL, eos_id=EOS, pad_id=PAD)
    for b in range(tokens.shape[0]):
        n = int(lengths[b])
        ref = apply_edits_reference(tokens[b].tolist(), n, cur[b].tolist(), nxt[b].tolist(),
                                    None if gap0 is None else int(gap0[b]), delete_id=DEL, eos_id=EOS, pad_id=PAD,
                                    width=width)
        new = int(res.lengths[b])
        assert res.tokens[b, :new].tolist() == ref["tokens"]
        assert (res.tokens[b, new:] == PAD).all()
        assert torch.nonzero(res.replaced[b]).flatten().tolist() == ref["replaced"]
        assert torch.nonzero(res.deleted[b]).flatten().tolist() == ref["deleted"]
        ins = {int(g): int(res.inserted_tokens[b, g]) for g in torch.nonzero(res.inserted[b]).flatten()}
        assert ins == ref["inserted"]
        assert (res.inserted_tokens[b][~res.inserted[b]] == PAD).all()


def test_apply_edits_by_hand():
    # row 0: replace 4->8, delete 5, insert 9 after 6, gap 0 inserts 7; row 1 is padding past length 1
    tokens = torch.tensor([[4, 5, 6], [3, 3, 3]])
    cur = torch.tensor([[8, DEL, 6], [3, DEL, DEL]])
    nxt = torch.tensor([[6, 6, 9], [EOS, 4, 4]])
    res = apply_edits(tokens, torch.tensor([3, 1]), cur, nxt, torch.tensor([7, 3]), delete_id=DEL, eos_id=EOS,
                      pad_id=PAD)
    assert res.tokens.tolist() == [[7, 8, 6], [3, PAD, PAD]]  # row 0 grew to 4 and is cut at W=3
    assert res.lengths.tolist() == [3, 1]
    assert res.deleted.tolist() == [[False, True, False], [False] * 3]
    assert res.replaced.tolist() == [[True, False, False], [False] * 3]
    assert res.inserted.tolist() == [[True, False, False, True], [False] * 4]
    assert res.inserted_tokens[0].tolist() == [7, PAD, PAD, 9]


def test_apply_edits_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="share one"):
        apply_edits(torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 3]), torch.zeros(2, 4, dtype=torch.long),
                    torch.zeros(2, 3, dtype=torch.long), delete_id=DEL, eos_id=EOS, pad_id=PAD)
