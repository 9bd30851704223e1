"""Stage 3's nearest-reference labels: records carry other valid responses; drafts are labelled
against the closest one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refinery.core.tasks import get_task
from refinery.core.train.data import collate_chat, encode_chat, validate_jsonl
from refinery.core.train.stage3 import nearest_references


def test_nearest_reference_picks_the_closest_candidate_and_keeps_the_truth_on_ties():
    truth, ref_a, ref_b = np.array([1, 2, 3, 4]), np.array([2, 1, 3, 4]), np.array([9, 9, 9])
    drafts = [np.array([2, 1, 3, 5]), np.array([1, 2, 3, 5]), np.array([9, 9])]
    out = nearest_references(drafts, [truth, truth, truth], [(ref_a, ref_b), (ref_a,), (ref_a, ref_b)])
    assert [o.tolist() for o in out] == [ref_a.tolist(), truth.tolist(), ref_b.tolist()]
    tie = nearest_references([np.array([7])], [np.array([1])], [(np.array([2]),)])
    assert tie[0].tolist() == [1]


def test_embedded_records_list_other_valid_solutions():
    for name in ("arith", "pycode"):
        task = get_task(name)
        records = task.training_records("train", 20, seed=0, kind="sft", references=16)
        assert any(r["references"] for r in records)
        assert all(r["response"] not in r["references"] for r in records)
        assert all("references" not in r for r in task.training_records("train", 3, seed=0, kind="sft"))


def test_references_are_validated_tokenized_and_carried_in_the_batch(tmp_path, tiny_tokenizer):
    good = {"history": [{"role": "user", "content": "1+1?"}], "response": "2", "references": ["two", "1+1=2"]}
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "references": None}) + "\n")
    assert validate_jsonl(path, "chat") == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "references": "two"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'references'"):
        validate_jsonl(bad, "chat")
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    items = encode_chat([good, {**good, "references": None}], tiny_tokenizer, seq_len=64, pad_len=8, eot_id=eot)
    assert len(items[0].references) == 2 and items[1].references == ()
    assert all(r[-1] == eot for r in items[0].references)
    batch = collate_chat(items, pad_len=8, seq_len=64, eos_id=tiny_tokenizer.eos_token_id)
    assert batch.references[0] is items[0].references and batch.to("cpu").references == batch.references


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from refinery.core.tokenizer import train_embedded_tokenizer

    return train_embedded_tokenizer(["1+1=2 two 2", "what is 1+1?"] * 20, vocab_size=300)
