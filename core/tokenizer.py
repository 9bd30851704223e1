"""Tokenizers: the user's LLaDA-8B tokenizer directory, and the small embedded BPE.

Both end up as a transformers fast tokenizer carrying the same special tokens and the same
LLaDA chat template, so the rest of refinery never branches on which one it holds:

    <|startoftext|><|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\n\n{response}<|eot_id|><|endoftext|>...

Responses end with <|eot_id|> and are padded with <|endoftext|> (LLaDA pads with EOS), so a
model learns where its answer stops. ME-DLM's delete token is a reserved token renamed
<|del|>; which one is configurable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from transformers import AutoTokenizer, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

MASK, DELETE, EOS, BOS = "<|mdm_mask|>", "<|del|>", "<|endoftext|>", "<|startoftext|>"
START_HEADER, END_HEADER, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
# Order fixes the embedded tokenizer's ids 0..6.
SPECIAL_TOKENS = (MASK, DELETE, EOS, BOS, START_HEADER, END_HEADER, EOT)

CHAT_TEMPLATE = (
    "{{ '<|startoftext|>' }}"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class SpecialTokenIds:
    """The ids a LLaDAConfig needs, read off a tokenizer."""

    mask_token_id: int
    delete_token_id: Optional[int]
    eos_token_id: int
    bos_token_id: Optional[int]
    eot_token_id: Optional[int]
    start_header_token_id: Optional[int]
    end_header_token_id: Optional[int]

    def as_config_kwargs(self) -> dict:
        return dict(self.__dict__)


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> SpecialTokenIds:
    vocab = tokenizer.get_vocab()

    def tid(tok: str, required: bool = False) -> Optional[int]:
        if tok not in vocab and required:
            raise ValueError(f"tokenizer has no special token {tok!r}")
        return vocab.get(tok)

    return SpecialTokenIds(
        mask_token_id=tid(MASK, True), delete_token_id=tid(DELETE), eos_token_id=tid(EOS, True),
        bos_token_id=tid(BOS), eot_token_id=tid(EOT), start_header_token_id=tid(START_HEADER),
        end_header_token_id=tid(END_HEADER),
    )


def _finish(tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = EOS  # LLaDA pads with EOS
    return tok


def train_embedded_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE over ``texts`` with refinery's special tokens at ids 0..6 (no unknown tokens possible)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=EOS, mask_token=MASK,
        additional_special_tokens=[DELETE, START_HEADER, END_HEADER, EOT],
    )
    return _finish(tok)


def load_tokenizer(path: str | Path, delete_token: Optional[str] = None) -> PreTrainedTokenizerFast:
    """Load a local tokenizer directory (never a hub name: ``local_files_only``).

    ``delete_token``: for LLaDA-8B, the reserved token that plays <|del|> (ME-DLM used
    ``<|reserved_token_0|>``, id 126084); it is renamed so that every layer sees ``<|del|>``.
    """
    path = check_tokenizer_dir(path)
    # registers refinery_llada, so AutoTokenizer can read a checkpoint's config.json
    import refinery.core.model  # noqa: F401

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if delete_token is not None and DELETE not in tok.get_vocab():
        vocab = tok.get_vocab()
        if delete_token not in vocab:
            raise ValueError(f"{path}: delete_token {delete_token!r} is not in the tokenizer's vocabulary")
        # Renaming in place keeps the id: the backend's added-token table maps the new content to the old id.
        _rename_added_token(tok, delete_token, DELETE)
    return _finish(tok)


def check_tokenizer_dir(path: str | Path) -> Path:
    """A directory holding a fast tokenizer (tokenizer.json); otherwise one UsageError naming it.

    Without tokenizer.json transformers would try to convert a slow tokenizer and ask for sentencepiece,
    which says nothing about the real cause."""
    from refinery.core.errors import UsageError

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer directory not found")
    if not (path / "tokenizer.json").is_file():
        raise UsageError(f"no tokenizer in {path} (expected tokenizer.json and tokenizer_config.json; "
                         "`refinery convert` copies them when the source has them)")
    return path


def _rename_added_token(tok: PreTrainedTokenizerFast, old: str, new: str) -> None:
    import json

    from tokenizers import Tokenizer

    state = json.loads(tok.backend_tokenizer.to_str())
    for added in state.get("added_tokens", []):
        if added["content"] == old:
            added["content"] = new
            added["special"] = True
    model_vocab = state.get("model", {}).get("vocab")
    if isinstance(model_vocab, dict) and old in model_vocab:
        model_vocab[new] = model_vocab.pop(old)
    tok._tokenizer = Tokenizer.from_str(json.dumps(state))
    # Rename inside the existing extra-special list: replacing the list with [new] alone would drop
    # <|eot_id|>, <|mdm_mask|>, ... from all_special_tokens and from the saved tokenizer_config.json.
    extra = getattr(tok, "extra_special_tokens", None)
    extra = [new if str(t) == old else str(t) for t in extra] if isinstance(extra, (list, tuple)) else []
    tok.add_special_tokens({"extra_special_tokens": extra + ([new] if new not in extra else [])})


def render_prompt(tokenizer: PreTrainedTokenizerFast, messages: list[dict]) -> list[int]:
    """Chat messages -> prompt ids ending with the assistant header (ready for generation)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def decode_response(tokenizer: PreTrainedTokenizerFast, ids: Iterable[int]) -> str:
    """Generated ids -> text, cut at the first end-of-turn / end-of-text, special tokens dropped."""
    stop = {tokenizer.convert_tokens_to_ids(t) for t in (EOT, EOS)} - {None}
    out: list[int] = []
    for i in ids:
        if int(i) in stop:
            break
        out.append(int(i))
    return tokenizer.decode(out, skip_special_tokens=True)
