"""Turn GSM8K (read-only, ../shared/data/gsm8k) into training inputs for the GPU smoke runs.

    python experiments/train/prepare_gsm8k.py --out runs/gsm8k [--vocab 8192]

Writes ``text.jsonl`` ({"text"}: question + answer, Stage 1), ``sft.jsonl`` ({"history", "response"},
Stages 2/3 and R2FT) and ``tokenizer/`` (the embedded byte-level BPE trained on those texts). Nothing
is downloaded; the data set is never copied into the repository.

A machine without the data set (an accelerator host) reuses a prepared ``runs/gsm8k`` copied to it
(:func:`ensure_prepared`; about 9 MB); only a tokenizer that does not load there is retrained, from
``text.jsonl``, which holds exactly the texts it was trained on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "gsm8k" / "train.jsonl"


def _train_tokenizer(texts: list[str], tok_dir: Path, vocab: int) -> None:
    from refinery.core.tokenizer import train_embedded_tokenizer

    shutil.rmtree(tok_dir, ignore_errors=True)
    train_embedded_tokenizer(texts, vocab_size=vocab).save_pretrained(str(tok_dir))


def prepare(out: Path, data: Path = DEFAULT_DATA, vocab: int = 8192) -> dict:
    if not data.is_file():
        raise FileNotFoundError(f"{data}: GSM8K train split not found")
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    text, sft = out / "text.jsonl", out / "sft.jsonl"
    text.write_text("".join(json.dumps({"text": r["question"] + "\n" + r["answer"]}) + "\n" for r in rows))
    sft.write_text("".join(json.dumps({"history": [{"role": "user", "content": r["question"]}],
                                       "response": r["answer"]}) + "\n" for r in rows))
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        _train_tokenizer([r["question"] + "\n" + r["answer"] for r in rows], tok_dir, vocab)
    return {"text": text, "sft": sft, "tokenizer": tok_dir}


def _tokenizer_loads(tok_dir: Path) -> bool:
    from refinery.core.tokenizer import load_tokenizer, special_token_ids

    try:
        special_token_ids(load_tokenizer(tok_dir))
        return True
    except Exception as e:  # missing, or written by a transformers/tokenizers this machine cannot read
        print(f"{tok_dir}: tokenizer does not load here ({type(e).__name__}: {e}); retraining it", file=sys.stderr)
        return False


def ensure_prepared(out: Path, data: Path = DEFAULT_DATA, vocab: int = 8192) -> dict:
    """``out`` as :func:`prepare` leaves it: reused when its JSONL files are there (copied to a machine
    without ``data``), else prepared from ``data``."""
    paths = {"text": out / "text.jsonl", "sft": out / "sft.jsonl", "tokenizer": out / "tokenizer"}
    if paths["text"].is_file() and paths["sft"].is_file():
        if not _tokenizer_loads(paths["tokenizer"]):
            texts = [json.loads(line)["text"] for line in paths["text"].read_text(encoding="utf-8").splitlines()
                     if line.strip()]
            _train_tokenizer(texts, paths["tokenizer"], vocab)
        return paths
    if not data.is_file():
        raise FileNotFoundError(f"{data}: GSM8K train split not found and {out} is not prepared; prepare it where "
                                f"the data set is (python experiments/train/prepare_gsm8k.py --out {out}) and copy it")
    return prepare(out, data, vocab)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gsm8k")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--vocab", type=int, default=8192)
    a = p.parse_args()
    if str(REPO) not in sys.path:  # run as a script: core/ lives at the repository root
        sys.path.insert(0, str(REPO))
    for k, v in prepare(Path(a.out), Path(a.data), a.vocab).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
