"""Helpers and fixtures of the ablation tests: a tiny random checkpoint, the smallest useful config, one
torch thread. Test modules import the fixtures from here: a conftest.py per test directory would clash
with the ``from conftest import ...`` other test directories use (all are imported as ``conftest``)."""

from __future__ import annotations

import contextlib

from pathlib import Path

import pytest
import torch
import yaml

from core.model import LLaDAConfig, LLaDAModel
from core.tokenizer import special_token_ids, train_embedded_tokenizer

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


def save_tiny_checkpoint(path: Path, next_token_head: bool = True) -> Path:
    tok = train_embedded_tokenizer(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    model = LLaDAModel(LLaDAConfig(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64,
                                   next_token_head=next_token_head, **special_token_ids(tok).as_config_kwargs()))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def small_config(model: Path, **overrides) -> dict:
    """2 strategies x 2 budgets x a few arith examples: the smallest config that exercises everything."""
    cfg = dict(
        name="small", model=str(model),
        tasks=[{"name": "arith", "n": 5, "split": "test", "seed": 0}],
        strategies=[{"name": "masked", "label": "masked", "params": {"remasking": "low_confidence"}},
                    {"name": "masked", "label": "masked-random", "params": {"remasking": "random"}}],
        budgets=["1/1", "1/4"], gen_length=16, batch_size=2, seeds=[0], device="cpu", score_workers=1,
    )
    cfg.update(overrides)
    return cfg


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    with single_thread():
        yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    with single_thread():
        return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint_no_next(tmp_path_factory) -> Path:
    with single_thread():
        return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_nonext", next_token_head=False)
