"""The shipped embedded checkpoints: size limits, model cards, and that they actually solve their tasks."""

from __future__ import annotations

import pytest
import torch

from refinery.core.checkpoint import EMBEDDED, load_model_and_tokenizer
from refinery.core.decode import generate
from refinery.core.tasks import get_task
from refinery.core.tokenizer import decode_response, render_prompt
from refinery.strategies import get_strategy

MiB = 1 << 20


def test_files_fit_the_limits_and_carry_model_cards():
    total = 0
    for name in ("embedded-stage2", "embedded-stage3"):
        files = list(EMBEDDED[name].iterdir())
        assert {"config.json", "tokenizer.json", "README.md"} <= {f.name for f in files}
        assert any(f.suffix == ".safetensors" for f in files) and not any(f.suffix in (".bin", ".pt") for f in files)
        assert all(f.stat().st_size <= 16 * MiB for f in files)
        total += sum(f.stat().st_size for f in files)
        assert "refinery ablate" in (EMBEDDED[name] / "README.md").read_text()
    assert total <= 40 * MiB


@pytest.mark.parametrize("name", ["embedded-stage2", "embedded-stage3"])
def test_shipped_model_solves_held_out_problems_at_budget_one(name):
    torch.set_num_threads(2)
    model, tok = load_model_and_tokenizer(name)
    assert (model.next_token_head is not None) == (name == "embedded-stage3")
    task = get_task("arith")
    examples = task.examples("test", 8, seed=11)
    res = generate(model, [render_prompt(tok, ex.messages()) for ex in examples], 48, get_strategy("masked"), "1/1")
    outputs = [decode_response(tok, res.tokens[b, : int(res.lengths[b])].tolist()) for b in range(len(examples))]
    scores = task.score_many(list(zip(examples, outputs)))
    assert sum(s.correct for s in scores) >= 6, [(o, s.error) for o, s in zip(outputs, scores)]
