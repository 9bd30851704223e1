"""Build the embedded training data and tokenizer from the generated tasks (no files needed).

    python -m refinery.experiments.embedded.prepare --out runs/embedded_data

Writes ``tokenizer/`` (byte-level BPE trained on the embedded corpus), ``pretrain.jsonl``
(Stage 1: ``{"text": ...}``), ``sft.jsonl`` (Stage 2 and 3: ``{"history": [...], "response": ...}``),
all from the TRAIN split of the embedded tasks; the test split stays unseen. ``--space 2`` draws them
from the larger problem space v2 (``core.tasks.embedded``), whose dev and test splits are fresh.

``prepare.json`` is written last: the arguments that determine the data (not ``workers``: each job has its
own seed and the parts are joined in order), the counts, and every output file's size. Its presence means the
directory is complete; a new prepare removes it first, so a killed run never leaves a manifest beside
half-written files. :func:`prepared` reads it back so a build can reuse equal data instead of rebuilding it.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

from refinery.core.errors import write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "prepare.json"
MANIFEST_VERSION = 1  # bump when the layout or the meaning of a field changes: old manifests then never match


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


def data_params(n_pretrain: int, n_sft: int, vocab_size: int, seed: int, references: int = 0,
                rename_prob: float = 0.0, space: int = 1) -> dict:
    """The arguments of :func:`prepare` that determine its output, as the manifest stores them."""
    return {"n_pretrain": n_pretrain, "n_sft": n_sft, "vocab_size": vocab_size, "seed": seed,
            "references": references, "rename_prob": float(rename_prob), "space": space}


def generator_digest(params: dict) -> str:
    """sha256 of a few records per task drawn as :func:`prepare` would draw them: changes when the task generators do.

    There is no version number on the generators, so a sample stands in for one; it catches a changed
    generator before stale data is reused, at the cost of ~16 records per task.
    """
    import hashlib

    from refinery.core.tasks import EMBEDDED_TASKS

    sample = [_records((name, "train", 8, params["seed"], kind, min(params["references"], 2),
                        params["rename_prob"], params["space"]))
              for name in EMBEDDED_TASKS for kind in ("text", "sft")]
    return hashlib.sha256(json.dumps(sample, sort_keys=True).encode()).hexdigest()


def _file_sizes(out: Path) -> dict[str, int]:
    """Every file prepare wrote under ``out`` (the manifest excepted) -> its size in bytes."""
    return {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, MANIFEST + ".tmp")}


def prepared(out: Path, params: dict) -> tuple[dict | None, str]:
    """``(counts, "")`` when ``out`` holds a complete prepare made with ``params``, else ``(None, why not)``.

    ``why`` starts with ``"differs: "`` when a complete prepare exists but was made with other
    arguments or other task generators (a caller may treat that as a conflict, not as missing data).
    """
    path = out / MANIFEST
    if not path.is_file():
        return None, f"no {path} (never prepared, or a prepare that did not finish)"
    try:
        manifest = json.loads(path.read_text())
        version, stored, generator = manifest["version"], manifest["params"], manifest["generator"]
        counts, files = manifest["counts"], manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None, f"{path} is unreadable"
    if version != MANIFEST_VERSION:
        return None, f"{path}: manifest version {version!r}, this code writes {MANIFEST_VERSION}"
    wanted = json.loads(json.dumps(params))  # the JSON form, as stored
    diff = [f"{k} {stored.get(k)!r} -> {wanted.get(k)!r}" for k in sorted(set(stored) | set(wanted))
            if stored.get(k) != wanted.get(k)]
    if not diff and generator != generator_digest(params):
        diff = ["the task generators changed since"]
    if diff:
        return None, f"differs: {path} was made with other data ({', '.join(diff)})"
    if _file_sizes(out) != files:  # a file removed, truncated or replaced since the manifest was written
        return None, f"{out}: its files no longer match {path}"
    return counts, ""


def prepare(out: Path, n_pretrain: int, n_sft: int, vocab_size: int, seed: int, workers: int = 1,
            references: int = 0, rename_prob: float = 0.0, space: int = 1) -> dict:
    """Write the tokenizer, ``pretrain.jsonl`` and ``sft.jsonl`` into ``out``, then its manifest; returns the counts."""
    from concurrent.futures import ProcessPoolExecutor

    from refinery.core.tasks import EMBEDDED_TASKS, embedded_corpus
    from refinery.core.tokenizer import train_embedded_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the files below are about to change: never vouch for them meanwhile
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
    params = data_params(n_pretrain, n_sft, vocab_size, seed, references, rename_prob, space)
    manifest = {"version": MANIFEST_VERSION, "params": params, "generator": generator_digest(params),
                "counts": counts, "files": _file_sizes(out)}
    write_json_atomic(out / MANIFEST, manifest)  # a manifest is either absent or whole
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
