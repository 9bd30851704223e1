"""``refinery lm-eval``: lm-evaluation-harness with the ``refinery`` model (see :mod:`refinery.lm_eval_model`)."""

from __future__ import annotations

import argparse

EPILOG = """\
Every argument is passed to lm-eval's `run` command (`lm-eval run --help` lists them); `--model refinery`
is added when no --model is given. Model args: pretrained=DIR (or embedded), strategy=NAME, preset=NAME,
budget=1/8, gen_length=256, batch_size=16, seed=0, device=cuda, dtype=fp32|bf16, mc_num=128, mc_batch=32;
any other key=value is a parameter of the strategy (e.g. cache=..., edit_passes=4).

example:
  refinery lm-eval --model_args pretrained=DIR,strategy=edit,preset=paper,budget=1/8,gen_length=256 --tasks gsm8k
several GPUs (lm-eval's way: one process per GPU, each with a share of the requests):
  accelerate launch -m refinery lm-eval --model_args pretrained=DIR,strategy=edit --tasks gsm8k
needs the eval extra: pip install -e ".[eval]"
"""


def add_parser(sub) -> None:
    p = sub.add_parser("lm-eval", help="run lm-evaluation-harness tasks with a refinery checkpoint and strategy",
                       description="Evaluate a checkpoint and decoding strategy with lm-evaluation-harness.",
                       usage="refinery lm-eval LM_EVAL_ARGS...  (--tasks, --model_args, --limit, --output_path, ...)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=run, pass_through=True)  # every other argument goes to `lm-eval run` (args.extra_args)


def run(args) -> int:
    import sys

    try:
        from lm_eval._cli import HarnessCLI
    except ModuleNotFoundError as e:
        raise ValueError(f"lm-eval is not installed ({e}); pip install -e \".[eval]\"") from None
    import refinery.lm_eval_model  # noqa: F401  (registers the `refinery` model with lm-eval)

    harness = list(args.extra_args)
    if not any(a == "--model" or a.startswith("--model=") for a in harness):
        harness = ["--model", "refinery", *harness]
    cli = HarnessCLI()
    argv, sys.argv = sys.argv, ["lm-eval", "run", *harness]
    try:
        cli.execute(cli.parse_args())
    finally:
        sys.argv = argv
    return 0
