"""The embedded training data: tokenizer + train-split records, optional references and renamed arguments."""

from __future__ import annotations

import json

from refinery.core.tasks import get_task
from refinery.core.tasks.pycode import RENAMES
from refinery.experiments.embedded.prepare import prepare


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prepare_writes_train_split_records_and_a_tokenizer_that_covers_them(tmp_path):
    counts = prepare(tmp_path, n_pretrain=20, n_sft=30, vocab_size=1024, seed=0, references=4, rename_prob=0.5)
    pre, sft = _read(tmp_path / "pretrain.jsonl"), _read(tmp_path / "sft.jsonl")
    assert counts["pretrain"] == len(pre) == 40 and counts["sft"] == len(sft) == 60
    assert all(set(r) == {"text"} for r in pre) and all({"history", "response", "references"} == set(r) for r in sft)
    prompts = {r["history"][0]["content"] for r in sft}
    held = {e.prompt for name in ("arith", "pycode") for split in ("dev", "test")
            for e in get_task(name).examples(split, 100)}
    assert not prompts & held  # only training problems
    renames = {n for names in RENAMES.values() for n in names}
    assert any(f"({n})" in p for p in prompts for n in renames)  # some pycode arguments renamed
    from refinery.core.tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path / "tokenizer")
    assert len(tok) == counts["vocab"] and counts["max_response_tokens"] <= 48
    text = sft[0]["response"]
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
