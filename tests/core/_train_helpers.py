"""Shared builders for the training tests: a tiny BPE tokenizer, toy JSONL data, configs from the shipped
tiny YAMLs with paths redirected into a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "experiments" / "train"

WORDS = ["red", "blue", "green", "cat", "dog", "bird", "runs", "sits", "eats", "the", "a", "big", "small"]


def toy_chat(n: int) -> list[dict]:
    """Deterministic question/answer pairs with answers of varying length."""
    out = []
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(3 * i + 1) % len(WORDS)]
        resp = " ".join([b, a] * (1 + i % 3))
        out.append({"history": [{"role": "user", "content": f"repeat {a} {b}"}], "response": resp})
    return out


def toy_texts(n: int) -> list[dict]:
    return [{"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(6 + i % 5))} for i in range(n)]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_tokenizer(path: Path) -> Path:
    from refinery.core.tokenizer import train_embedded_tokenizer

    texts = [r["text"] for r in toy_texts(40)] + [r["response"] for r in toy_chat(40)] + ["repeat user assistant"]
    tok = train_embedded_tokenizer(texts, vocab_size=300)
    tok.save_pretrained(str(path))
    return path


def make_workspace(root: Path, n_chat: int = 8, n_text: int = 40) -> dict:
    """Tokenizer + data files under ``root``; returns their paths."""
    return {
        "tokenizer": make_tokenizer(root / "tok"),
        "sft": write_jsonl(root / "sft.jsonl", toy_chat(n_chat)),
        "text": write_jsonl(root / "text.jsonl", toy_texts(n_text)),
    }


def tiny_overrides(ws: dict, stage_data: str, out: Path, **extra) -> dict:
    o = {"tokenizer": str(ws["tokenizer"]), "data.train_files": [str(ws[stage_data])], "engine.out_dir": str(out),
         "engine.progress": False, "engine.tensorboard": False}
    o.update(extra)
    return o


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def loss_ratio(metrics: list[dict], key: str = "loss", k: int = 5) -> float:
    first = sum(m[key] for m in metrics[:k]) / k
    last = sum(m[key] for m in metrics[-k:]) / k
    return last / first


# ---------------------------------------------------------------------------- objective tests (recipes, syncs)
MASK, DEL, EOS, EOT = 99, 98, 1, 2
SPECIAL = {"mask_token_id": MASK, "delete_token_id": DEL, "eos_token_id": EOS, "pad_token_id": EOS,
           "eot_token_id": EOT, "bos_token_id": None}


def cfg_for(stage: str, recipe: str = "project", **sections):
    """A training config of ``stage`` with only the given sections set (paths are placeholders)."""
    from refinery.core.train.config import config_from_dict

    raw = {"stage": stage, "recipe": recipe, "tokenizer": "t", "data": {"train_files": ["x.jsonl"]}, **sections}
    return config_from_dict(raw, "test.yaml")


def objective_model():
    """The tiny random model of the objective tests, with a large init spread, so that the losses depend
    visibly on which labels and masks are used."""
    import torch

    from refinery.core.model import LLaDAConfig, LLaDAModel

    torch.manual_seed(0)
    conf = LLaDAConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64, max_sequence_length=256,
                       init_std=0.3, next_token_head=True, mask_token_id=MASK, delete_token_id=DEL, eos_token_id=EOS,
                       pad_token_id=EOS, eot_token_id=EOT)
    return LLaDAModel(conf).eval()


def chat_batch(seed: int, n_rows: int = 3, pad_len: int = 4, prompt_min: int = 3):
    """Ragged prompts and answers (answer + end-of-turn) of ordinary tokens 3..97, collated like training."""
    import numpy as np

    from refinery.core.train.data import ChatExample, collate_chat

    rng = np.random.default_rng(seed)
    ex = []
    for _ in range(n_rows):
        prompt = rng.integers(3, 98, int(rng.integers(prompt_min, prompt_min + 6)))
        answer = np.append(rng.integers(3, 98, int(rng.integers(2, 11))), EOT)
        ex.append(ChatExample(prompt.astype(np.int64), answer.astype(np.int64)))
    return collate_chat(ex, pad_len=pad_len, seq_len=128, eos_id=EOS)
