"""Fixtures for the app tests: a tiny checkpoint (model + tokenizer in one dir) and a headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

CHROMIUM = Path("/usr/bin/chromium")
TEXTS = [
    "def total(lst):\n    total = 0\n    for item in lst:\n        total += item\n    return total\n",
    "What is 12 + 7? The answer is 19.",
    "Compute 3 * 4 - 5. Answer: 7",
    "The quick brown fox jumps over the lazy dog.",
] * 4


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """Train a tiny BPE, build a random 2-layer LLaDA with a next-token head, save both into ``path``."""
    from core.model import LLaDAConfig, LLaDAModel
    from core.tokenizer import special_token_ids, train_embedded_tokenizer

    tok = train_embedded_tokenizer(TEXTS, vocab_size=320)
    torch.manual_seed(seed)
    cfg = LLaDAConfig(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64,
                      next_token_head=True, **special_token_ids(tok).as_config_kwargs())
    model = LLaDAModel(cfg).eval()
    # Readable output from random weights: silence tokens that decode to partial UTF-8 bytes, and spread
    # the remaining confidences so ranking strategies have something to rank.
    unreadable = [i for i in range(len(tok)) if "\ufffd" in tok.decode([i])]
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        for head in (model.lm_head, model.next_token_head):
            head.weight[unreadable] = 0  # logit 0 never beats the best of ~200 random rows
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture(scope="session")
def tiny_pair(tiny_checkpoint):
    from core.checkpoint import load_model_and_tokenizer

    return load_model_and_tokenizer(str(tiny_checkpoint))


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing and we are root; fails loudly otherwise."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"{CHROMIUM} is missing and cannot be installed here (need root and apt-get): "
                    "run `apt-get install -y chromium`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} does not exist")
    return CHROMIUM

