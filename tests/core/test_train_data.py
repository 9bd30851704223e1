"""Training data: every line validated up front (file:line errors), packing, chat collation, sampler."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from refinery.core.train.data import ChatExample, EpochSampler, collate_chat, validate_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_helpers as H  # noqa: E402

GOOD_CHAT = json.dumps({"history": [{"role": "user", "content": "hi"}], "response": "yo"})


def lines_file(tmp_path: Path, lines: list[bytes]) -> Path:
    p = tmp_path / "data.jsonl"
    p.write_bytes(b"".join(line + b"\n" for line in lines))
    return p


@pytest.mark.parametrize("bad,why", [
    (json.dumps({"history": [{"role": "user", "content": "hi"}]}).encode(), "field 'response' missing"),
    (json.dumps({"history": [{"role": "user", "content": "hi"}], "response": 3}).encode(),
     "'response' must be a string"),
    (json.dumps({"history": "hi", "response": "x"}).encode(), "'history' must be a non-empty list"),
    (json.dumps({"history": [{"role": "user"}], "response": "x"}).encode(), "history[0]"),
    (b'{"history": [], "response": "caf\xe9"}', "not valid UTF-8"),
    (b'{"history": ', "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
])
def test_bad_chat_line_names_file_and_line(tmp_path, bad, why):
    p = lines_file(tmp_path, [GOOD_CHAT.encode()] * 16 + [bad] + [GOOD_CHAT.encode()])
    with pytest.raises(ValueError) as e:
        validate_jsonl(p, "chat")
    assert str(e.value).startswith(f"{p}:17: ") and why in str(e.value)


def test_bad_pretrain_line(tmp_path):
    p = lines_file(tmp_path, [b'{"text": "a"}', b'{"txt": "b"}'])
    with pytest.raises(ValueError, match=r"data.jsonl:2: field 'text' missing"):
        validate_jsonl(p, "pretrain")
    assert validate_jsonl(lines_file(tmp_path, [b'{"text": "a"}', b"", b'{"text": "b"}']), "pretrain") == 2


def test_bad_data_fails_before_training_via_cli(tmp_path):
    """`refinery train` exits 2 with file:line, and nothing is trained or written (all lines checked first)."""
    ws = H.make_workspace(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(ws["sft"].read_bytes() + b'{"history": [{"role": "user", "content": "x"}]}\n')
    out = tmp_path / "out"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text((H.TINY / "tiny_sft.yaml").read_text()
                   .replace("runs/tiny/tokenizer", str(ws["tokenizer"])).replace("runs/tiny/sft.jsonl", str(bad)))
    proc = subprocess.run([sys.executable, "-m", "refinery", "train", str(cfg), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, cwd=H.REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}:9: field 'response' missing" in proc.stderr
    assert not out.exists()


def test_pack_texts_joins_with_eos_and_chunks(tmp_path):
    import datasets

    from refinery.core.train.data import pack_texts

    class Tok:  # whitespace "tokenizer": word -> its length, so the stream is easy to write by hand
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[len(w) + 10 for w in t.split()] for t in texts]}

    ds = datasets.Dataset.from_list([{"text": "a bb"}, {"text": "ccc"}, {"text": "dddd e"}])
    chunks = pack_texts(ds, Tok(), seq_len=3, eos_id=1)
    # stream: 11 12 1 | 13 1 14 | 11 1 (dropped tail)
    assert chunks.tolist() == [[11, 12, 1], [13, 1, 14]]


def test_collate_chat_pads_response_to_multiple_of_pad_len():
    ex = [ChatExample(np.array([5, 6, 7]), np.array([20, 21, 2])), ChatExample(np.array([5]), np.array([30, 2]))]
    b = collate_chat(ex, pad_len=4, seq_len=64, eos_id=1)
    # row 0: prompt 3 + response 3 padded to 4; row 1: prompt 1 + 2 padded to 4 -> width 7
    assert b.input_ids.tolist() == [[5, 6, 7, 20, 21, 2, 1], [5, 30, 2, 1, 1, 1, 1]]
    assert b.attention_mask.tolist() == [[True] * 7, [True] * 5 + [False] * 2]
    assert b.response_mask.tolist() == [[False] * 3 + [True] * 4, [False] + [True] * 4 + [False] * 2]
    assert b.prompt_len.tolist() == [3, 1] and b.target_len.tolist() == [3, 2]


def test_sampler_covers_each_epoch_and_resumes():
    s = EpochSampler(7, seed=3)
    first = s.take(5)
    state = s.state_dict()
    rest = s.take(9)
    assert sorted(first + rest[:2]) == list(range(7))  # epoch 0 is a permutation
    assert sorted(rest[2:9]) == list(range(7))  # so is epoch 1
    t = EpochSampler(7, seed=3)
    t.load_state_dict(state)
    assert t.take(9) == rest
    assert EpochSampler(7, seed=4).take(7) != EpochSampler(7, seed=3).take(7)
    with pytest.raises(ValueError, match="resume"):
        EpochSampler(8, seed=3).load_state_dict(state)


def test_chat_prompt_is_the_chat_template(tmp_path):
    from refinery.core.tokenizer import load_tokenizer, render_prompt
    from refinery.core.train.data import encode_chat, load_records

    ws = H.make_workspace(tmp_path, n_chat=3)
    tok = load_tokenizer(ws["tokenizer"])
    recs = H.toy_chat(3)
    items = encode_chat(load_records([str(ws["sft"])], "chat"), tok, seq_len=96, pad_len=8,
                        eot_id=tok.convert_tokens_to_ids("<|eot_id|>"))
    for ex, rec in zip(items, recs):
        assert ex.prompt.tolist() == render_prompt(tok, rec["history"])
        want = tok(rec["response"], add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|eot_id|>")]
        assert ex.target.tolist() == want
    assert torch.is_tensor(collate_chat(items, 8, 96, 1).input_ids)
