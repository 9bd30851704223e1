"""Traces: serialisation, replay from the events alone, and the one pass walk that replay and the app share."""

from __future__ import annotations

import numpy as np
import pytest

from refinery.core.decode import generate
from refinery.core.trace import CompactTrace, walk_pass
from refinery.strategies import get_strategy

MASK = 9


def test_trace_save_load_round_trip_and_replay(tiny_model, tmp_path):
    res = generate(tiny_model, [[5, 6, 7], [8]], 16, get_strategy("remdm", schedule="cap", eta=0.3), "1/2", seed=2)
    compact = res.trace.compact()
    path = tmp_path / "trace.npz"
    compact.save(path)
    loaded = CompactTrace.load(path)
    assert loaded.tokens.dtype == np.int32 and loaded.tokens.shape == (8, 2, 16)
    assert (loaded.replay() == res.tokens.numpy()).all()
    for kind, ev in compact.events.items():
        assert np.array_equal(ev, loaded.events[kind]), kind
    assert len(loaded.scores) == len(loaded.events["unmasked"])


def test_replay_rejects_a_tampered_trace(tiny_model):
    compact = generate(tiny_model, [[5, 6, 7]], 8, "masked", "1/2").trace.compact()
    compact.tokens[1, 0, compact.events["unmasked"][0, 2]] ^= 1  # a change no event explains
    with pytest.raises(ValueError, match="do not reproduce"):
        compact.replay()


def _events(**kinds) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.int32).reshape(-1, 2) for k, v in kinds.items()}


def test_walk_pass_reads_a_pass_gap_by_gap():
    """An insertion comes before its position; a deleted token stays in the walk with its old value; a
    position with both a point event and a deletion counts as deleted."""
    prev = np.array([1, 2, 3, MASK, 5], np.int32)
    ev = _events(inserted=[[0, 7], [5, 8]], replaced=[[1, 4]], deleted=[[2, 0]], unmasked=[[3, 6]],
                 remasked=[[4, 5]])
    assert walk_pass(prev, ev, MASK) == [("inserted", 7, None), (None, 1, None), ("replaced", 4, 2),
                                         ("deleted", 3, None), ("unmasked", 6, MASK), ("remasked", MASK, 5),
                                         ("inserted", 8, None)]
    assert walk_pass(prev, _events(), MASK) == [(None, int(t), None) for t in prev]
    assert walk_pass(np.zeros(0, np.int32), _events(inserted=[[0, 3]]), MASK) == [("inserted", 3, None)]


def test_replay_applies_the_walk_without_the_deleted_tokens():
    """A hand-made one-pass trace: replay rebuilds the recorded tokens from the walk."""
    initial = np.array([[1, 2, 3, MASK, 5, 0]], np.int32)
    after = np.array([[[7, 1, 4, 6, MASK, 8]]], np.int32)
    ev = {k: np.concatenate([np.zeros((len(v), 2), np.int32), v], 1) for k, v in
          _events(inserted=[[0, 7], [5, 8]], replaced=[[1, 4]], deleted=[[2, 3]], unmasked=[[3, 6]],
                  remasked=[[4, 5]]).items()}
    trace = CompactTrace(initial, np.array([5], np.int32), after, np.array([[6]], np.int32), np.ones((1, 1), bool),
                         np.array(["edit"]), ev, np.zeros(1, np.float32), MASK, 0, -1)
    assert trace.replay().tolist() == after[0].tolist()
    trace.tokens[0, 0, 5] = 9  # the last insertion claimed a token the events do not hold
    with pytest.raises(ValueError, match="do not reproduce"):
        trace.replay()
