"""Hand-built cases for convolutional decoding."""

from __future__ import annotations

import pytest
import torch

from tiny_models import VOCAB
from refinery.core.decode import generate
from refinery.strategies import get_strategy
from refinery.strategies.base import DecodeContext, DecodeState
from refinery.strategies.conv import conv_gate


def flat_script(prompt_len=2, conf=1.0):
    def fn(ids):
        B, W = ids.shape
        logits = torch.zeros(B, W, VOCAB)
        logits[:, prompt_len:, 20] = conf
        return logits, None

    return fn


def test_gate_is_a_tanh_of_the_decoded_count_in_a_centred_box():
    x = torch.tensor([[5, 6, 63, 63, 63, 63, 7, 63]])  # prompt [5, 6]; region: 4 masks, a token, a mask
    state = DecodeState(x=x, attention_mask=torch.ones_like(x, dtype=torch.bool), lengths=torch.tensor([6]),
                        active=torch.tensor([True]), nfe=torch.zeros(1, dtype=torch.long))
    ctx = DecodeContext(2, 6, 6, 63, 1, 1, None, None, [torch.Generator()])
    gate = conv_gate(state, ctx, window=3, gate_scale=1.0)
    counts = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]])  # decoded neighbours within +-1
    assert torch.allclose(gate, torch.tanh(counts))
    even = conv_gate(state, ctx, window=2, gate_scale=2.0)  # even windows grow to the next odd width
    assert torch.allclose(even, torch.tanh(2 * counts))


def test_unmasking_flows_outward_from_the_prompt(scripted):
    model = scripted(flat_script())
    res = generate(model, [[3, 4]], 8, get_strategy("conv", window=3), "1/1")
    order = res.trace.compact().events["unmasked"][:, 2].tolist()
    assert order == list(range(8))  # equal confidences: the gate alone orders them left to right


def test_stochastic_variant_commits_everything_by_the_last_pass(scripted):
    model = scripted(flat_script(conf=0.0))  # a flat model: no position is ever confident
    res = generate(model, [[3, 4]], 8, get_strategy("conv", variant="stochastic", window=3), "1/4")
    assert res.nfe.tolist() == [2] and (res.tokens != 63).all()


def test_conv_validation():
    with pytest.raises(ValueError, match="window"):
        get_strategy("conv", window=0).config.check(8, 8)
