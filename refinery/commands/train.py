"""``refinery train CONFIG``: run a training stage from a YAML config (single process, torchrun or deepspeed)."""

from __future__ import annotations


def add_parser(sub) -> None:
    from refinery.helpformat import DefaultsFormatter

    p = sub.add_parser(
        "train", help="train a stage (pretrain / sft / stage3 / r2ft) from a YAML config",
        formatter_class=DefaultsFormatter,
        description="Train one stage of the recipe from a YAML config (experiments/train/*.yaml): Stage 1 "
                    "pretraining (masked diffusion loss), Stage 2 SFT (loss on the response only), Stage 3 "
                    "mask-and-edit (ME-DLM: the mask head plus the next-token edit head on drafts), or R2FT. "
                    "One process on a CPU or GPU, or several under torchrun / the deepspeed launcher (the "
                    "config's engine section). Checkpoints and metrics go to engine.out_dir; --resume "
                    "continues from the newest checkpoint there.")
    p.add_argument("config", help="YAML training config (see experiments/train/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output directory")
    p.add_argument("--out", default=None, help="output directory (default: the config's engine.out_dir)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="optimiser steps (default: the config's optim.max_steps)")
    p.add_argument("--device", default=None, help="cpu / cuda / cuda:N (default: the config's engine.device)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop this many seconds after start-up (setup included) and save the final model "
                        "(default: run every step)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key (dotted; VALUE read as YAML), e.g. --set optim.lr=3e-4")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse_suppress())
    p.set_defaults(run=run)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS  # the deepspeed launcher passes --local_rank; LOCAL_RANK in the env is what we read


def run(args) -> int:
    import os

    from refinery.core.checkpoint import check_device
    from refinery.core.train.config import load_config
    from refinery.core.train.engine import Trainer

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    overrides = {}
    if args.out is not None:
        overrides["engine.out_dir"] = args.out
    if args.max_steps is not None:
        overrides["optim.max_steps"] = args.max_steps
    if args.device is not None:
        overrides["engine.device"] = args.device
    if args.max_seconds is not None:
        overrides["engine.max_seconds"] = args.max_seconds
    if args.no_progress:
        overrides["engine.progress"] = False
    overrides.update(parse_sets(args.set))
    cfg = load_config(args.config, overrides)
    check_device(cfg.engine.device, field="--device" if args.device is not None else f"{args.config}: engine.device")
    trainer = Trainer(cfg, where=args.config)
    out = trainer.train(resume=args.resume)
    if trainer.info.is_main:
        print(f"trained {cfg.stage} for {trainer.step} of {cfg.optim.max_steps} steps -> {out}")
    return 0


def parse_sets(items: list[str]) -> dict:
    """["optim.lr=3e-4", "data.train_files=[a.jsonl]"] -> {"optim.lr": 0.0003, ...} (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"refinery train: --set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out
