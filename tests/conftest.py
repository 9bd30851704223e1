"""Shared fixtures: a tiny random LLaDA model and a scripted model with hand-set logits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.model import LLaDAConfig, LLaDAModel

VOCAB, MASK, DELETE, EOS, EOT = 64, 63, 62, 1, 2


def tiny_config(**kw) -> LLaDAConfig:
    base = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64, mask_token_id=MASK,
                delete_token_id=DELETE, eos_token_id=EOS, eot_token_id=EOT, next_token_head=True)
    base.update(kw)
    return LLaDAConfig(**base)


@pytest.fixture(scope="session")
def tiny_model() -> LLaDAModel:
    torch.manual_seed(1234)
    model = LLaDAModel(tiny_config()).eval()
    with torch.no_grad():  # sharpen the heads so confidences spread out and EOS / delete actually occur
        model.lm_head.weight.mul_(40)
        model.next_token_head.weight.mul_(40)
    return model


class ScriptedModel(nn.Module):
    """A stand-in mask predictor whose logits come from ``fn(input_ids) -> (logits, next_logits)``."""

    def __init__(self, fn, vocab: int = VOCAB, **config):
        super().__init__()
        self.fn = fn
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the loop a device
        ids = dict(mask_token_id=MASK, delete_token_id=DELETE, eos_token_id=EOS, pad_token_id=EOS, eot_token_id=EOT)
        ids.update(config)
        self.config = SimpleNamespace(vocab_size=vocab, **ids)
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, compute_next=True, logits_from=0, **kw):
        self.calls += 1
        logits, next_logits = self.fn(input_ids)
        logits = logits[:, logits_from:]
        next_logits = next_logits[:, logits_from:] if (compute_next and next_logits is not None) else None
        return SimpleNamespace(logits=logits, next_logits=next_logits)


@pytest.fixture
def scripted():
    return ScriptedModel
