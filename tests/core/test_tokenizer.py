"""Tokenizers: the LLaDA-8B directory path (delete-token rename, chat template) and the embedded BPE trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refinery.core.tokenizer import (
    SPECIAL_TOKENS, decode_response, load_tokenizer, render_prompt, special_token_ids, train_embedded_tokenizer,
)

# The LLaDA-8B special tokens (a few reserved ones included), added after the BPE merges as in the real file.
LLADA_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|reserved_token_0|>", "<|reserved_token_1|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|mdm_mask|>"]
CORPUS = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
          "def add(a, b):\n    return a + b\n", "What is 12 * 7? The answer is 84."]


def write_llada_like_tokenizer(path: Path) -> dict[str, int]:
    """A tiny byte-level BPE shaped like LLaDA-8B's tokenizer, saved as PreTrainedTokenizerFast -> special ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(CORPUS * 5, trainer=trainer)
    bpe.add_special_tokens(LLADA_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  additional_special_tokens=LLADA_SPECIALS[2:])
    tok.save_pretrained(str(path))
    vocab = tok.get_vocab()
    return {t: vocab[t] for t in LLADA_SPECIALS}


@pytest.fixture
def llada_dir(tmp_path) -> tuple[Path, dict[str, int]]:
    ids = write_llada_like_tokenizer(tmp_path / "llada")
    return tmp_path / "llada", ids


def test_delete_token_rename_keeps_id(llada_dir):
    path, ids = llada_dir
    tok = load_tokenizer(path, delete_token="<|reserved_token_0|>")
    vocab = tok.get_vocab()
    assert vocab["<|del|>"] == ids["<|reserved_token_0|>"]
    assert "<|reserved_token_0|>" not in vocab
    assert tok.convert_ids_to_tokens(ids["<|reserved_token_0|>"]) == "<|del|>"
    assert tok.encode("a<|del|>b", add_special_tokens=False)[1] == ids["<|reserved_token_0|>"]  # never split
    assert len(tok) == len(load_tokenizer(path))  # nothing added, nothing lost
    sid = special_token_ids(tok)
    assert (sid.mask_token_id, sid.delete_token_id, sid.eos_token_id, sid.bos_token_id, sid.eot_token_id,
            sid.start_header_token_id, sid.end_header_token_id) == (
        ids["<|mdm_mask|>"], ids["<|reserved_token_0|>"], ids["<|endoftext|>"], ids["<|startoftext|>"],
        ids["<|eot_id|>"], ids["<|start_header_id|>"], ids["<|end_header_id|>"])


def test_rename_keeps_the_other_special_tokens(llada_dir, tmp_path):
    """Regression: the rename used to replace the extra-special list by [<|del|>] alone."""
    path, _ = llada_dir
    tok = load_tokenizer(path, delete_token="<|reserved_token_0|>")
    for name in ("<|del|>", "<|eot_id|>", "<|mdm_mask|>", "<|start_header_id|>", "<|reserved_token_1|>"):
        assert name in tok.all_special_tokens, name
    assert "<|reserved_token_0|>" not in tok.all_special_tokens
    tok.save_pretrained(str(tmp_path / "saved"))
    again = load_tokenizer(tmp_path / "saved")  # no delete_token needed any more
    assert again.get_vocab() == tok.get_vocab()
    assert "<|eot_id|>" in again.all_special_tokens
    assert special_token_ids(again) == special_token_ids(tok)


def test_unknown_delete_token_and_missing_dir(llada_dir, tmp_path):
    path, _ = llada_dir
    with pytest.raises(ValueError, match="reserved_token_9"):
        load_tokenizer(path, delete_token="<|reserved_token_9|>")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")


def test_llada_chat_template(llada_dir):
    path, _ = llada_dir
    tok = load_tokenizer(path, delete_token="<|reserved_token_0|>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 * 7?"}]
    ids = render_prompt(tok, messages)
    expected = ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nWhat is 12 * 7?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.decode(ids) == expected
    assert ids == tok.encode(expected, add_special_tokens=False)


def test_decode_response_stops_at_end_of_turn(llada_dir):
    path, ids = llada_dir
    tok = load_tokenizer(path, delete_token="<|reserved_token_0|>")
    body = tok.encode("The answer is 84.", add_special_tokens=False)
    out = body + [ids["<|eot_id|>"]] + tok.encode("junk", add_special_tokens=False) + [ids["<|endoftext|>"]] * 3
    assert decode_response(tok, out) == "The answer is 84."
    assert decode_response(tok, body + [ids["<|endoftext|>"]]) == "The answer is 84."


TASK_TEXT = [
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast; how much does she make?",
    "def is_palindrome(s: str) -> bool:\n    return s == s[::-1]\n",
    "x , y = 3 , 4 .  Two  spaces,\ttab and trailing space ",
    "#### 18\n\n\\frac{1}{2} + $x^2$ {braces} [brackets] 'quotes' \"double\" n't",
]


def test_embedded_tokenizer_special_ids_and_round_trip():
    tok = train_embedded_tokenizer(TASK_TEXT * 10, vocab_size=400)
    vocab = tok.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(7))
    sid = special_token_ids(tok)
    assert (sid.mask_token_id, sid.delete_token_id, sid.eos_token_id) == (0, 1, 2)
    unseen = "Unseen: Zebra QUIZ ~ | ` @ 1234567890 ; %^&* <tag>"
    for text in TASK_TEXT + [unseen]:  # byte-level BPE: every ASCII string round-trips, even unseen ones
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert all(i >= 7 for i in ids)  # plain text never produces special ids
    assert all(t in tok.all_special_tokens for t in SPECIAL_TOKENS)


def test_embedded_tokenizer_save_load(tmp_path):
    tok = train_embedded_tokenizer(TASK_TEXT * 10, vocab_size=400)
    tok.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "tokenizer.json").read_text())["added_tokens"][0]["content"] == SPECIAL_TOKENS[0]
    again = load_tokenizer(tmp_path)
    assert again.get_vocab() == tok.get_vocab()
    for text in TASK_TEXT:
        assert again.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    messages = [{"role": "user", "content": TASK_TEXT[0]}]
    assert render_prompt(again, messages) == render_prompt(tok, messages)
    assert again.pad_token == "<|endoftext|>"
