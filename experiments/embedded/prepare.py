"""Build the embedded training data and tokenizer from the generated tasks (no files needed).

    python -m experiments.embedded.prepare --out runs/embedded_data

Writes ``tokenizer/`` (byte-level BPE trained on the embedded corpus), ``pretrain.jsonl``
(Stage 1: ``{"text": ...}``), ``sft.jsonl`` (Stage 2 and 3: ``{"history": [...], "response": ...}``),
all from the TRAIN split of the embedded tasks; the test split stays unseen.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

TASKS = ("arith", "pycode")


def write_jsonl(path: Path, records) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n


def prepare(out: Path, n_pretrain: int, n_sft: int, vocab_size: int, seed: int) -> dict:
    from core.tasks import embedded_corpus, get_task
    from core.tokenizer import train_embedded_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = train_embedded_tokenizer(embedded_corpus(n_per_task=5000, seed=seed), vocab_size=vocab_size)
    tok.save_pretrained(out / "tokenizer")
    counts = {}
    pre, sft = [], []
    for i, name in enumerate(TASKS):
        task = get_task(name)
        pre += task.training_records("train", n_pretrain, seed + 10 * i, kind="text")
        sft += task.training_records("train", n_sft, seed + 10 * i + 1, kind="sft")
    import random

    rng = random.Random(seed)
    rng.shuffle(pre)
    rng.shuffle(sft)
    counts["pretrain"] = write_jsonl(out / "pretrain.jsonl", pre)
    counts["sft"] = write_jsonl(out / "sft.jsonl", sft)
    lengths = [len(tok.encode(r["response"], add_special_tokens=False)) + 1 for r in sft[:2000]]
    counts["max_response_tokens"] = max(lengths)
    counts["vocab"] = len(tok)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/embedded_data"))
    ap.add_argument("--n-pretrain", type=int, default=100_000, help="records per task for Stage 1")
    ap.add_argument("--n-sft", type=int, default=100_000, help="records per task for Stage 2/3")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(prepare(args.out, args.n_pretrain, args.n_sft, args.vocab_size, args.seed)))


if __name__ == "__main__":
    main()
