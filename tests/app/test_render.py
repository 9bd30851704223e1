"""Rendering of traces: pass views from a real generate() trace, and edit diffs from a hand-made trace."""

from __future__ import annotations

import re

import numpy as np
import pytest

from refinery.app.render import (EVENT_STYLES, MASK_GLYPH, MASK_STYLE, TokenPieces, TraceView, board_html, column_html,
                        describe_hunk, diff_html, edit_hunks, items_html, legend_html, pass_items)
from refinery.core.decode import generate
from refinery.core.tokenizer import render_prompt
from refinery.core.trace import CompactTrace

GEN = 16


@pytest.fixture(scope="module")
def remdm_trace(tiny_pair):
    """A real trace of a remasking strategy (so passes carry both unmasked and remasked events)."""
    model, tok = tiny_pair
    ids = render_prompt(tok, [{"role": "user", "content": "What is 12 + 7?"}])
    res = generate(model, [ids], GEN, "remdm", "1/1", seed=3)
    return res.trace.compact()


def _chars(tok, text: str) -> list[int]:
    """One token per character (every ASCII byte is a token of a byte-level BPE)."""
    out = [tok.encode(c, add_special_tokens=False) for c in text]
    assert all(len(ids) == 1 for ids in out)
    return [ids[0] for ids in out]


def test_real_trace_every_pass_matches_recorded_tokens(tiny_pair, remdm_trace):
    _, tok = tiny_pair
    tr = remdm_trace
    assert tr.num_passes > 1
    first = pass_items(tr, 0, 0)
    assert [it.token for it in first] == [tr.mask_id] * GEN and all(it.kind is None for it in first)
    for k in range(1, tr.num_passes + 1):
        shown = [it.token for it in pass_items(tr, 0, k) if it.kind != "deleted"]
        assert shown == tr.tokens[k - 1, 0, : tr.lengths[k - 1, 0]].tolist()
    with pytest.raises(ValueError, match="out of range"):
        pass_items(tr, 0, tr.num_passes + 1)


def test_real_trace_html_colours_each_mask_phase_event(tiny_pair, remdm_trace):
    _, tok = tiny_pair
    tr = remdm_trace
    pieces = TokenPieces(tok, tr.mask_id)
    pages = [items_html(pass_items(tr, 0, k), pieces) for k in range(tr.num_passes + 1)]
    counts = {k: len(tr.events[k]) for k in ("unmasked", "remasked")}
    assert counts["unmasked"] > 0 and counts["remasked"] > 0, counts
    for kind in ("unmasked", "remasked"):
        bg = EVENT_STYLES[kind][0]
        marked = sum(len(re.findall(rf'class="tok ev-{kind}" style="background:{bg}', p)) for p in pages)
        assert marked == counts[kind]  # one coloured span per recorded event
    # The initial canvas is all masks: one folded tail chip carrying the count and the mask colour.
    assert f"{MASK_GLYPH} ×{GEN}" in pages[0] and MASK_STYLE[0] in pages[0]


def test_mask_runs_fold_only_at_the_tail(tiny_pair):
    _, tok = tiny_pair
    pieces = TokenPieces(tok, 0)
    word = _chars(tok, "ab")
    tr = CompactTrace(np.array([[0, 0, 0, *word, 0, 0, 0, 0]], np.int32), np.array([9], np.int32),
                      np.zeros((0, 1, 9), np.int32), np.zeros((0, 1), np.int32), np.zeros((0, 1), bool),
                      np.array([], "<U4"), {}, mask_id=0, pad_id=2)
    page = items_html(pass_items(tr, 0, 0), pieces)
    assert page.count('class="tok tok-mask"') == 3 and f"{MASK_GLYPH} ×4" in page
    assert ">a<" in page and ">b<" in page


@pytest.fixture
def edit_trace(tiny_pair):
    """Pass 0 fixes the text by hand: 'it'->'el', insert ':', '+'->'-', delete ' junk' (a 'mask' pass first)."""
    model, tok = tiny_pair
    mask, pad = model.config.mask_token_id, model.config.pad_token_id
    before = "for item in lst\n total += item junk"
    after = "for elem in lst:\n total -= item"
    prev = _chars(tok, before)
    L = len(prev) + 1
    p = before.index
    ev = {
        "unmasked": np.array([[0, 0, 0, prev[0]]], np.int32),
        "remasked": np.zeros((0, 4), np.int32),
        "replaced": np.array([[1, 0, p("it"), _chars(tok, "e")[0]], [1, 0, p("it") + 1, _chars(tok, "l")[0]],
                              [1, 0, p("+"), _chars(tok, "-")[0]]], np.int32),
        "deleted": np.array([[1, 0, i, prev[i]] for i in range(p(" junk"), len(before))], np.int32),
        "inserted": np.array([[1, 0, p("\n"), _chars(tok, ":")[0]]], np.int32),
    }
    initial = np.array([[mask, *prev[1:], pad]], np.int32)

    def row(ids):
        return np.array([*ids, *[pad] * (L - len(ids))], np.int32)

    tr = CompactTrace(initial, np.array([len(prev)], np.int32), np.stack([[row(prev)], [row(_chars(tok, after))]]),
                      np.array([[len(prev)], [len(after)]], np.int32), np.ones((2, 1), bool),
                      np.array(["mask", "edit"]), ev, np.array([0.5], np.float32), mask, pad)
    tr.replay()  # the hand-made events really turn `before` into `after`
    return tr


def test_edit_pass_hunks_and_descriptions(tiny_pair, edit_trace):
    _, tok = tiny_pair
    pieces = TokenPieces(tok, edit_trace.mask_id)
    hunks = edit_hunks(pass_items(edit_trace, 0, 2))
    assert [h.kind for h in hunks] == ["replace", "insert", "replace", "delete"]
    assert [describe_hunk(h, pieces) for h in hunks] == [
        "replace `it` with `el` after `for ` (position 4)",
        "insert `:` after ` lst` (position 15)",
        "replace `+` with `-` after `tal ` (position 23)",
        "delete ` junk` after `item` (position 30)",
    ]
    diff = diff_html(hunks, pieces)
    assert "<ins" in diff and ">:</ins>" in diff and "> junk</del>" in diff
    assert "no edits" in diff_html([], pieces)


def test_edit_pass_html_shows_replaced_deleted_inserted_with_colours(tiny_pair, edit_trace):
    _, tok = tiny_pair
    pieces = TokenPieces(tok, edit_trace.mask_id)
    page = items_html(pass_items(edit_trace, 0, 2), pieces)
    for kind, n in (("replaced", 3), ("deleted", 5), ("inserted", 1)):
        bg = EVENT_STYLES[kind][0]
        assert len(re.findall(rf'class="tok ev-{kind}" style="background:{bg}', page)) == n
    assert "line-through" in page and "was &#x27;+&#x27;" in page
    view = TraceView("edit", edit_trace, pieces=pieces, nfe=2, max_nfe=4, final_text="x", correct=True)
    col = column_html(view, 2)
    assert "phase edit" in col and "NFE 2/4" in col and "rf-diff" in col and "✓ correct" in col
    assert "rf-diff" not in column_html(view, 1)  # mask passes show no diff
    assert "pass 2/2" in column_html(view, 99)  # the shared slider may run past a short trace


def test_board_has_legend_and_one_column_per_view(tiny_pair, edit_trace):
    _, tok = tiny_pair
    views = [TraceView("a", edit_trace, pieces=TokenPieces(tok, edit_trace.mask_id)), TraceView("b", note="waiting")]
    page = board_html(views, 1)
    assert page.startswith(legend_html()) and page.count('class="rf-col"') == 2 and "waiting" in page
    for kind, (bg, _, _) in EVENT_STYLES.items():
        assert f"ev-{kind}" in legend_html() and bg in legend_html()


def test_a_reverted_pass_shows_the_way_back_to_the_earlier_text(tiny_pair, edit_trace):
    _, tok = tiny_pair
    tr = edit_trace
    back = {**tr.events, "reverted": np.array([[2, 0, -1, 1]], np.int32)}  # pass 2: back to before pass 1
    tr = CompactTrace(tr.initial, tr.initial_lengths, np.concatenate([tr.tokens, tr.tokens[:1]]),
                      np.concatenate([tr.lengths, tr.lengths[:1]]), np.ones((3, 1), bool),
                      np.array(["mask", "edit", "edit"]), back, tr.scores, tr.mask_id, tr.pad_id)
    assert (tr.replay() == tr.tokens[0]).all()  # back to the text from before the edit pass
    pieces = TokenPieces(tok, tr.mask_id)
    hunks = edit_hunks(pass_items(tr, 0, 3))
    assert [describe_hunk(h, pieces) for h in hunks] == [
        "replace `el` with `it` after `for ` (position 4)",
        "delete `:` after ` lst` (position 15)",
        "replace `-` with `+` after `tal ` (position 24)",
        "insert ` junk` after `item` (position 31)",
    ]
    assert "back to the text before pass 2" in column_html(TraceView("edit", tr, pieces=pieces), 3)
    assert "back to the text" not in column_html(TraceView("edit", tr, pieces=pieces), 2)
