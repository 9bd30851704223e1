"""Training data: validated JSONL -> token arrays -> deterministic, resumable batches.

Two record kinds:
  pretrain  ``{"text": str}``; documents are tokenized, joined with eos separators and cut into
            ``seq_len`` chunks (the tail that does not fill a chunk is dropped).
  chat      ``{"history": [{"role": str, "content": str}, ...], "response": str}``; the prompt is the
            chat template of ``history`` ending in the assistant header, the target is the response
            plus <|eot_id|>, padded with eos to a multiple of ``pad_len`` at collation time.

Every line of every file is validated before anything is tokenized, so bad data fails fast with
``file:line: reason``. Files are then read with the ``datasets`` json builder (local files only).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

KINDS = ("pretrain", "chat")


def _check_chat(rec: dict) -> Optional[str]:
    if "history" not in rec:
        return "field 'history' missing"
    if "response" not in rec:
        return "field 'response' missing"
    if not isinstance(rec["response"], str):
        return f"field 'response' must be a string, got {type(rec['response']).__name__}"
    hist = rec["history"]
    if not isinstance(hist, list) or not hist:
        return "field 'history' must be a non-empty list of {role, content} messages"
    for j, m in enumerate(hist):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"field 'history[{j}]' must have string 'role' and 'content'"
    refs = rec.get("references")
    if refs is not None and (not isinstance(refs, list) or not all(isinstance(r, str) for r in refs)):
        return "field 'references' (other valid responses) must be a list of strings"
    return None


def _check_pretrain(rec: dict) -> Optional[str]:
    if "text" not in rec:
        return "field 'text' missing"
    if not isinstance(rec["text"], str):
        return f"field 'text' must be a string, got {type(rec['text']).__name__}"
    return None


CHECKS = {"pretrain": _check_pretrain, "chat": _check_chat}


def validate_jsonl(path: str | Path, kind: str) -> int:
    """Check every line of ``path`` for ``kind``; return the record count. Raises ValueError('file:line: why')."""
    check = CHECKS[kind]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training data file not found")
    count = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            why = "expected a JSON object" if not isinstance(rec, dict) else check(rec)
            if why:
                raise ValueError(f"{path}:{lineno}: {why}")
            count += 1
    if count == 0:
        raise ValueError(f"{path}: no records")
    return count


def load_records(files: Sequence[str], kind: str, progress: bool = False):
    """Validate all ``files`` then load them as one ``datasets.Dataset`` (json builder, local only)."""
    total = sum(validate_jsonl(f, kind) for f in files)
    try:
        import datasets
    except ImportError:  # a bare accelerator image: the records were validated above, read them directly
        log.warning("the datasets package is not installed; reading %s as plain JSON lines", list(files))
        return [json.loads(line) for f in files for line in Path(f).read_text(encoding="utf-8").splitlines()
                if line.strip()]
    if not progress:
        datasets.disable_progress_bars()
    ds = datasets.load_dataset("json", data_files=[str(Path(f).resolve()) for f in files], split="train")
    if len(ds) != total:
        raise ValueError(f"{list(files)}: datasets read {len(ds)} records, validation counted {total}")
    return ds


def pack_texts(ds, tokenizer, seq_len: int, eos_id: int) -> np.ndarray:
    """Documents -> (N, seq_len) int64 chunks of the eos-joined token stream (Stage-1 packing)."""
    ids = tokenizer([rec["text"] for rec in ds], add_special_tokens=False)["input_ids"]
    stream = np.fromiter((t for doc in ids for t in (*doc, eos_id)), dtype=np.int64)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"pretraining data has {len(stream)} tokens, fewer than one chunk of seq_len={seq_len}")
    log.info("packed %d tokens into %d chunks of %d (dropped %d)", len(stream), n, seq_len, len(stream) - n * seq_len)
    return stream[: n * seq_len].reshape(n, seq_len)


@dataclass
class ChatExample:
    prompt: np.ndarray  # (P,) int64, ends with the assistant header
    target: np.ndarray  # (R,) int64 response tokens + <|eot_id|>, unpadded
    references: tuple = ()  # other valid responses (+ <|eot_id|>), for Stage 3's nearest-reference labels


def encode_chat(ds, tokenizer, seq_len: int, pad_len: int, eot_id: int) -> list[ChatExample]:
    """Render prompts with the chat template and tokenize responses (+eot). Examples whose prompt leaves no
    room for one ``pad_len`` block are skipped (logged); responses longer than the room left are cut."""
    from refinery.core.tokenizer import render_prompt

    out, skipped = [], 0
    for rec in ds:
        prompt = render_prompt(tokenizer, list(rec["history"]))
        room = seq_len - len(prompt)
        if room < pad_len:
            skipped += 1
            continue
        texts = [rec["response"], *(rec.get("references") or [])]
        resp, *refs = (np.asarray((ids + [eot_id])[:room], dtype=np.int64)
                       for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
        out.append(ChatExample(np.asarray(prompt, dtype=np.int64), resp, tuple(refs)))
    if skipped:
        log.warning("skipped %d of %d chat examples whose prompt leaves < pad_len tokens of seq_len", skipped, len(ds))
    if not out:
        raise ValueError(f"no chat example fits seq_len={seq_len}")
    return out


@dataclass
class ChatBatch:
    """Prompt + eos-padded response per row, right-padded to a common width T.

    input_ids (B, T); attention_mask (B, T) bool: prompt + padded response; response_mask (B, T) bool: the
    padded response (the diffusion target); prompt_len, target_len (B,): unpadded response+eot length;
    references: per row, the other valid responses (+eot) as host arrays (empty tuples when none)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_len: torch.Tensor
    target_len: torch.Tensor
    references: tuple = ()
    host: Optional["ChatBatch"] = None  # the CPU batch this one was copied from (None: this one is on the CPU)

    def to(self, device) -> "ChatBatch":
        """The batch on ``device`` (pinned, non-blocking copies), keeping the CPU original as ``host``: the
        objectives read lengths and masks there instead of waiting on the device for them."""
        if self.host is not None:
            return self.host.to(device)
        if torch.device(device).type == "cpu":
            return self
        return ChatBatch(*(to_device(t, device) for t in (self.input_ids, self.attention_mask, self.response_mask,
                                                           self.prompt_len, self.target_len)), self.references, self)

    def on_host(self) -> "ChatBatch":
        """The CPU copy of this batch, without a device-to-host copy when it was made by :meth:`to`."""
        if self.host is not None:
            return self.host
        if self.input_ids.device.type == "cpu":
            return self
        return ChatBatch(*(t.cpu() for t in (self.input_ids, self.attention_mask, self.response_mask,
                                             self.prompt_len, self.target_len)), self.references)


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on ``device`` without stalling the host: CUDA copies go through pinned memory with
    ``non_blocking`` (a pageable copy makes PyTorch wait for the stream, i.e. for all queued GPU work).
    The pinned block comes from PyTorch's caching host allocator, which keeps it until the copy is done."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def padded_length(n: int, pad_len: int, room: int) -> int:
    return min(-(-n // pad_len) * pad_len, room)


def collate_chat(examples: Sequence[ChatExample], pad_len: int, seq_len: int, eos_id: int) -> ChatBatch:
    """The eos padding up to a multiple of ``pad_len`` is part of the target (the model learns to stop);
    the batch padding beyond it is not (attention mask 0), so a row trains the same in any batch."""
    rows = [(ex.prompt, ex.target, padded_length(len(ex.target), pad_len, seq_len - len(ex.prompt))) for ex in examples]
    T = max(len(p) + r for p, _, r in rows)
    B = len(rows)
    ids = torch.full((B, T), eos_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.bool)
    resp = torch.zeros((B, T), dtype=torch.bool)
    for b, (p, t, r) in enumerate(rows):
        P = len(p)
        ids[b, :P] = torch.from_numpy(p)
        ids[b, P:P + len(t)] = torch.from_numpy(t)
        attn[b, :P + r] = True
        resp[b, P:P + r] = True
    prompt_len = torch.tensor([len(p) for p, _, _ in rows], dtype=torch.long)
    target_len = torch.tensor([len(t) for _, t, _ in rows], dtype=torch.long)
    return ChatBatch(ids, attn, resp, prompt_len, target_len, tuple(ex.references for ex in examples))


class EpochSampler:
    """Seeded per-epoch permutations with a resumable (epoch, cursor) position.

    Every process holds the same sampler and takes its own slice of each global batch, so the data order
    depends only on (seed, world size, batch sizes) - and on nothing that a restart could change."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.cursor >= self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            step = min(k - len(out), self.n - self.cursor)
            out.extend(int(i) for i in self._perm[self.cursor:self.cursor + step])
            self.cursor += step
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n or state["seed"] != self.seed:
            raise ValueError(f"resume: data has {self.n} items (seed {self.seed}) but the checkpoint was taken "
                             f"with {state['n']} (seed {state['seed']})")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._perm = self._permutation(self.epoch)
