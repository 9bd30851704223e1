"""Build the embedded training data and tokenizer from the generated tasks (no files needed).

    python -m refinery.experiments.embedded.prepare --out runs/embedded_data

Writes ``tokenizer/`` (byte-level BPE trained on the embedded corpus), ``pretrain.jsonl``
(Stage 1: ``{"text": ...}``), ``sft.jsonl`` (Stage 2 and 3: ``{"history": [...], "response": ...}``),
all from the TRAIN split of the embedded tasks; the test split stays unseen. ``--space 2`` draws them
from the larger problem space v2 (``core.tasks.embedded``), whose dev and test splits are fresh.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

log = logging.getLogger(__name__)

def write_jsonl(path: Path, records) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n


def _records(args: tuple) -> list[dict]:
    name, split, n, seed, kind, refs, rename_prob, space = args
    from refinery.core.tasks import get_task

    kwargs = {"space": space} if space != 1 else {}  # space 1 exactly as before
    task = get_task(name, rename_prob=rename_prob, **kwargs) if name == "pycode" and rename_prob else \
        get_task(name, **kwargs)
    return task.training_records(split, n, seed, kind=kind, references=refs if kind == "sft" else 0)


def prepare(out: Path, n_pretrain: int, n_sft: int, vocab_size: int, seed: int, workers: int = 1,
            references: int = 0, rename_prob: float = 0.0, space: int = 1) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    from refinery.core.tasks import EMBEDDED_TASKS, embedded_corpus
    from refinery.core.tokenizer import train_embedded_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = train_embedded_tokenizer(embedded_corpus(n_per_task=5000, seed=seed, space=space), vocab_size=vocab_size)
    tok.save_pretrained(out / "tokenizer")
    jobs = [(name, "train", n, seed + 10 * i + j, kind, references, rename_prob, space)
            for i, name in enumerate(EMBEDDED_TASKS)
            for j, (kind, n) in enumerate((("text", n_pretrain), ("sft", n_sft)))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_records, jobs))
    else:
        parts = [_records(job) for job in jobs]
    pre = [r for job, part in zip(jobs, parts) if job[4] == "text" for r in part]
    sft = [r for job, part in zip(jobs, parts) if job[4] == "sft" for r in part]
    rng = random.Random(seed)
    rng.shuffle(pre)
    rng.shuffle(sft)
    counts = {"pretrain": write_jsonl(out / "pretrain.jsonl", pre), "sft": write_jsonl(out / "sft.jsonl", sft)}
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
    ap.add_argument("--workers", type=int, default=1, help="processes generating records")
    ap.add_argument("--references", type=int, default=0,
                    help="sft records list the other valid solutions found in this many draws (Stage 3)")
    ap.add_argument("--rename-prob", type=float, default=0.0,
                    help="pycode: share of records whose argument is renamed to a name no evaluation problem uses")
    ap.add_argument("--space", type=int, default=1, choices=(1, 2),
                    help="problem space of the embedded tasks: 1 (the shipped checkpoints' data) or 2 (larger, "
                         "fresh dev/test splits; evaluate with the task option space: 2)")
    args = ap.parse_args()
    print(json.dumps(prepare(args.out, args.n_pretrain, args.n_sft, args.vocab_size, args.seed, args.workers,
                             args.references, args.rename_prob, args.space)))


if __name__ == "__main__":
    main()
