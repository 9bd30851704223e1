"""The one decode loop: budgets, padding, partial canvases, callbacks, what reaches the model (its trace:
test_trace.py)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from tiny_models import EOS, MASK
from refinery.core.decode import generate, left_pad, parse_budget, strip_padding
from refinery.strategies import get_strategy


def test_parse_budget_and_strip_padding():
    assert parse_budget("1/8") == Fraction(1, 8) and parse_budget(0.25) == Fraction(1, 4)
    toks = torch.tensor([[5, 6, EOS, 7], [5, 6, 7, 8], [EOS, 1, 1, 1]])
    assert strip_padding(toks, EOS).tolist() == [2, 4, 0]


def test_left_pad_accepts_either_side():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0, device="cpu")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[True] * 3, [False, False, True]]
    right = (torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([[1, 1, 1], [1, 0, 0]]))
    ids2, mask2 = left_pad(right, pad_id=0, device="cpu")
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], 0, "cpu")


def test_partial_canvas_only_fills_masks_and_streams_every_pass(tiny_model):
    init = torch.tensor([[20, MASK, 22, MASK, MASK, 25, MASK, MASK]])
    seen = []
    res = generate(tiny_model, [[5, 6]], 8, get_strategy("masked", tokens_per_pass=2), "1/1", init=init,
                   on_step=lambda i, rec: seen.append((i, int(rec.unmasked.sum()))))
    kept = init[0] != MASK
    assert torch.equal(res.tokens[0][kept], init[0][kept]) and (res.tokens != MASK).all()
    assert res.nfe.tolist() == [3] and seen == [(0, 2), (1, 2), (2, 1)]
    with pytest.raises(ValueError, match="init has shape"):
        generate(tiny_model, [[5, 6]], 6, "masked", "1/1", init=init)


def test_unpadded_canvases_go_to_the_model_without_an_attention_mask(tiny_model):
    """No padding -> attention_mask=None (SDPA may take its flash kernel); padding or stripped rows -> a mask;
    the head is evaluated on the region only unless the next-token head needs the last prompt column."""
    calls = []
    original = type(tiny_model).forward

    def spy(self, input_ids, attention_mask=None, **kw):
        calls.append((attention_mask is None, kw.get("logits_from"), kw.get("compute_next")))
        return original(self, input_ids, attention_mask=attention_mask, **kw)

    type(tiny_model).forward = spy
    try:
        generate(tiny_model, [[5, 6, 7]], 8, "masked", "1/2")
        assert calls and all(c == (True, 3, False) for c in calls), calls
        calls.clear()
        generate(tiny_model, [[5, 6, 7], [8]], 8, "masked", "1/2")
        assert calls and all(c == (False, 3, False) for c in calls), calls
        calls.clear()
        generate(tiny_model, [[5, 6, 7]], 8, "edit", "1/1")
        edit_calls = [c for c in calls if c[2]]
        assert edit_calls and all(c[1] == 2 for c in edit_calls)  # gap 0 is read at the last prompt column
        calls.clear()
        draft = torch.tensor([[20, 21, 22, 23, EOS, EOS, EOS, EOS]])  # cut at its end of text: a mask from then on
        generate(tiny_model, [[5, 6, 7]], 8, get_strategy("edit", edit_passes=2), "1/2", init=draft)
        assert calls and all(c == (False, 2, True) for c in calls), calls
    finally:
        type(tiny_model).forward = original
