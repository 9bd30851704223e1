"""Plain helpers of the app tests: a tiny checkpoint builder (model + tokenizer in one dir) whose random weights
decode to readable text. The fixtures over it (and a headless Chromium) are in this directory's conftest.py."""

from __future__ import annotations

from pathlib import Path

import torch

TEXTS = [
    "def total(lst):\n    total = 0\n    for item in lst:\n        total += item\n    return total\n",
    "What is 12 + 7? The answer is 19.",
    "Compute 3 * 4 - 5. Answer: 7",
    "The quick brown fox jumps over the lazy dog.",
] * 4


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """Train a tiny BPE, build a random 2-layer LLaDA with a next-token head, save both into ``path``."""
    from refinery.core.model import LLaDAConfig, LLaDAModel
    from refinery.core.tokenizer import special_token_ids, train_embedded_tokenizer

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
