"""Turn GSM8K (read-only, ../shared/data/gsm8k) into training inputs for the GPU smoke runs.

    python experiments/train/prepare_gsm8k.py --out runs/gsm8k [--vocab 8192]

Writes ``text.jsonl`` ({"text"}: question + answer, Stage 1), ``sft.jsonl`` ({"history", "response"},
Stages 2/3 and R2FT) and ``tokenizer/`` (the embedded byte-level BPE trained on those texts). Nothing
is downloaded; the data set is never copied into the repository.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gsm8k" / "train.jsonl"


def prepare(out: Path, data: Path = DEFAULT_DATA, vocab: int = 8192) -> dict:
    from core.tokenizer import train_embedded_tokenizer

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
        tok = train_embedded_tokenizer([r["question"] + "\n" + r["answer"] for r in rows], vocab_size=vocab)
        tok.save_pretrained(str(tok_dir))
    return {"text": text, "sft": sft, "tokenizer": tok_dir}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gsm8k")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--vocab", type=int, default=8192)
    a = p.parse_args()
    for k, v in prepare(Path(a.out), Path(a.data), a.vocab).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
