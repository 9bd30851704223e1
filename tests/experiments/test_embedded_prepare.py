"""The embedded training data: tokenizer + train-split records, optional references and renamed arguments."""

from __future__ import annotations

import json

import pytest

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


def test_prepare_writes_its_manifest_last_and_prepared_reuses_only_equal_complete_data(tmp_path, monkeypatch):
    from refinery.experiments.embedded import prepare as prep

    params = prep.data_params(n_pretrain=6, n_sft=5, vocab_size=1024, seed=0, references=2)
    counts = prepare(tmp_path, workers=1, **params)
    manifest = json.loads((tmp_path / prep.MANIFEST).read_text())
    assert manifest["params"] == params and manifest["counts"] == counts
    assert manifest["files"]["sft.jsonl"] == (tmp_path / "sft.jsonl").stat().st_size
    assert prep.prepared(tmp_path, params) == (counts, "")
    # other arguments: named, and marked as a difference (not as missing data)
    found, why = prep.prepared(tmp_path, {**params, "n_sft": 7, "space": 2})
    assert found is None and why.startswith("differs: ") and "n_sft 5 -> 7" in why and "space 1 -> 2" in why
    # other task generators with the same arguments
    monkeypatch.setattr(prep, "generator_digest", lambda p: "0" * 64)
    found, why = prep.prepared(tmp_path, params)
    assert found is None and "task generators changed" in why
    monkeypatch.undo()
    # a file changed after the manifest was written
    with open(tmp_path / "sft.jsonl", "a") as f:
        f.write("{}\n")
    found, why = prep.prepared(tmp_path, params)
    assert found is None and "no longer match" in why


def test_a_prepare_killed_halfway_leaves_no_manifest(tmp_path, monkeypatch):
    from refinery.experiments.embedded import prepare as prep

    params = prep.data_params(n_pretrain=4, n_sft=4, vocab_size=1024, seed=0)
    prepare(tmp_path, **params)
    assert prep.prepared(tmp_path, params)[0] is not None

    def killed(path, records):  # the process dies while writing the data files
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "write_jsonl", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path, **params)
    assert not (tmp_path / prep.MANIFEST).exists()
    found, why = prep.prepared(tmp_path, params)
    assert found is None and "did not finish" in why
