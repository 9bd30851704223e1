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
