"""The tiny models of the test suite: ids, the tiny random LLaDA config, a scripted model and a tiny saved
checkpoint. Plain names for any test module to import (``from tiny_models import VOCAB``); the fixtures
built from them live in tests/conftest.py."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from refinery.core.model import LLaDAConfig, LLaDAModel
from refinery.core.tokenizer import special_token_ids, train_embedded_tokenizer

VOCAB, MASK, DELETE, EOS, EOT = 64, 63, 62, 1, 2


def tiny_config(**kw) -> LLaDAConfig:
    base = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64, mask_token_id=MASK,
                delete_token_id=DELETE, eos_token_id=EOS, eot_token_id=EOT, next_token_head=True)
    base.update(kw)
    return LLaDAConfig(**base)


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


CORPUS = [f"Tom has {a} apples and gets {b} more. {a}+{b}={a + b}\n#### {a + b}\ndef f(xs):\n    return sum(xs)"
          for a in range(25) for b in range(25)]


@contextlib.contextmanager
def single_thread():
    """Tiny models run fastest on one thread; with other processes on the machine, two threads of
    spin-waiting OpenMP made these tests 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def save_tiny_checkpoint(path: Path, next_token_head: bool = True, **config) -> Path:
    """A random 2-layer LLaDA and a 300-token BPE trained on ``CORPUS``, saved together into ``path``;
    ``config`` overrides LLaDAConfig fields (e.g. ``max_sequence_length``, ``delete_token_id=None``)."""
    tok = train_embedded_tokenizer(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    fields = dict(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64,
                  next_token_head=next_token_head, **special_token_ids(tok).as_config_kwargs())
    model = LLaDAModel(LLaDAConfig(**{**fields, **config}))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
