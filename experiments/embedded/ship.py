"""Copy a trained embedded model into a shippable directory, its weights cast to a storage dtype.

    python -m refinery.experiments.embedded.ship runs/embedded/stage2 core/assets/embedded/stage2 --dtype bf16

Training saves fp32 master weights; the repository keeps each checkpoint file <= 16 MiB, so the
larger embedded models are stored in bf16 (evaluation loads them as fp32: ``dtype: fp32`` in the
ablation configs). The tokenizer, chat template and ``train_config.json`` travel with the weights;
the model card (README.md) is left as it is in the destination.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "train_config.json")


def ship(src: Path, dst: Path, dtype: str = "bf16", max_shard_size: str = "16MB") -> list[Path]:
    """Write ``src``'s model in ``dtype`` plus its side files into ``dst``; returns the weight files."""
    from refinery.core.checkpoint import load_model, parse_dtype

    model = load_model(src, "cpu", parse_dtype(dtype))
    dst.mkdir(parents=True, exist_ok=True)
    for old in [*dst.glob("model*.safetensors"), *dst.glob("model.safetensors.index.json")]:
        old.unlink()
    model.save_pretrained(str(dst), max_shard_size=max_shard_size)
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return sorted(dst.glob("model*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="a trained checkpoint directory (config.json + safetensors)")
    ap.add_argument("dst", type=Path, help="the directory to write (created; its README.md is kept)")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--max-shard-size", default="16MB")
    args = ap.parse_args()
    for path in ship(args.src, args.dst, args.dtype, args.max_shard_size):
        print(f"{path}: {path.stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
