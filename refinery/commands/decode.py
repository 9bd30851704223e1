"""``refinery decode``: run one strategy on one prompt (free text or a task's example) and show the passes."""

from __future__ import annotations

import json
import os

from refinery.helpformat import DefaultsFormatter

GENERATED_TASKS = ("arith", "pycode")  # the prompt forms the embedded model was trained on
DEFAULT_PRESET = "project"  # the preset a strategy runs with when --preset is not given (if it has one)
SMALL_MODEL = 100_000_000  # parameters: below this a CPU decode of one prompt runs fastest on one thread


def add_parser(sub) -> None:
    p = sub.add_parser(
        "decode", help="generate from a prompt (or a task's example) with one strategy and show each pass",
        formatter_class=DefaultsFormatter,
        description="Decode one prompt with one strategy. The embedded model answers only the prompt forms "
                    "of its two tasks (arith word problems, pycode function specs): use --task to draw one. "
                    f"A strategy with a {DEFAULT_PRESET!r} preset runs it unless --preset says otherwise "
                    "(`edit`: the setting of the README's results table); --param overrides single values.")
    p.add_argument("prompt", nargs="?", default=None,
                   help="user prompt (wrapped in the chat template unless --raw); or give --task")
    p.add_argument("--task", default=None, metavar="NAME",
                   help="draw the prompt from a task (arith, pycode; gsm8k, math500, humaneval, mbpp need "
                        "--data-dir) and print the scorer's verdict")
    p.add_argument("--example", type=int, default=0, metavar="N", help="which example of the task's split")
    p.add_argument("--split", default=None, choices=("train", "dev", "test"),
                   help="split to draw from (default: dev for the generated tasks arith/pycode, so that trying "
                        "prompts never looks at the test split the results table reports; test for benchmarks, "
                        "which have no dev split)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="local benchmark files (e.g. ../shared/data)")
    p.add_argument("--model", default="embedded", help="checkpoint directory or shipped name")
    p.add_argument("--strategy", default="masked", help="registered strategy name (see `refinery strategies`)")
    p.add_argument("--preset", default=None,
                   help=f"named preset of the strategy (`refinery strategies --presets`); default: "
                        f"{DEFAULT_PRESET!r} where the strategy has one, else its config defaults; 'none': "
                        "the config defaults")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy parameter over the preset, value parsed as JSON when possible (repeatable)")
    p.add_argument("--budget", default="1/1", help="forward passes per generated token, e.g. 1/8")
    p.add_argument("--gen-length", type=int, default=48, help="tokens to generate (48: as in the results table)")
    p.add_argument("--cache", default="none", choices=("none", "prefix", "dual"),
                   help="KV cache: none recomputes every column each pass; prefix keeps the columns before the "
                        "strategy's block; dual also those after it (Fast-dLLM; approximate)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice of the strategy")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: 1 for models under 100M parameters, whose one-prompt matrix "
                        "products are too small to share out and whose threads spin idle on a busy machine; "
                        "else torch's default)")
    p.add_argument("--dtype", default=None, help="fp32 / bf16 / fp16 (default: fp32 on a CPU, as stored on a GPU)")
    p.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")
    p.add_argument("--quiet", action="store_true", help="print only the output (no passes, no loading bar)")
    p.set_defaults(run=run)


def parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def run(args) -> int:
    _quiet_start(args.quiet)
    from refinery.core.checkpoint import load_model_and_tokenizer, parse_dtype
    from refinery.core.decode import check_budget, check_cache, generate
    from refinery.core.errors import UsageError
    from refinery.core.tokenizer import decode_response, render_prompt

    if args.gen_length < 1:
        raise UsageError(f"--gen-length {args.gen_length}: must be at least 1 token")
    check_budget(args.budget, args.gen_length)  # before the model loads: a budget under one pass is refused
    strategy, preset = build_strategy(args.strategy, args.preset, parse_params(args.param))
    check_cache(strategy, args.cache)  # before loading the model: a refused mode fails at once
    choice = draw_example(args.task, args.example, args.split, args.data_dir) if args.task else None
    if choice is None and args.prompt is None:
        raise UsageError("decode: give a PROMPT or --task NAME (e.g. --task arith --example 0)")
    model, tok = load_model_and_tokenizer(args.model, args.device, parse_dtype(args.dtype))
    _set_threads(model, args.threads)
    if choice is not None:
        ids = render_prompt(tok, choice.example.messages())
    else:
        ids = tok.encode(args.prompt, add_special_tokens=False) if args.raw else \
            render_prompt(tok, [{"role": "user", "content": args.prompt}])
    res = generate(model, [ids], args.gen_length, strategy, args.budget, seed=args.seed, cache=args.cache)
    row = res.tokens[0, : int(res.lengths[0])].tolist()
    text = decode_response(tok, row)
    if args.quiet:
        print(text)
        return 0
    if choice is not None:
        print(f"prompt ({choice.label}):\n{choice.example.prompt}")
    print(f"strategy {strategy_line(strategy, preset)}  budget {args.budget}  NFE {int(res.nfe[0])}/{res.max_nfe}  "
          f"{res.seconds:.2f}s" + (f"  cache {args.cache}" if args.cache != "none" else ""))
    passes = [(rec.phase + (f", {rec.cache}" if rec.cache else ""), rec.counts()) for rec in res.trace.records]
    for line in pass_summary(passes):
        print("  " + line)
    if res.draft_tokens is not None:
        draft = decode_response(tok, res.draft_tokens[0, : int(res.draft_lengths[0])].tolist())
        print(f"draft (before the edit passes){_verdict(choice, draft)}:\n{draft}")
    print(f"output{_verdict(choice, text)}:")
    print(text)
    return 0


def _quiet_start(quiet: bool) -> None:
    """Before transformers is imported: never ask a hub (checkpoints load from local directories
    only), and under --quiet no loading bar and no advisory logging."""
    import sys

    if "huggingface_hub" not in sys.modules:  # read at import; a process that has it already (tests) is left alone
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if quiet:
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _set_threads(model, threads: int | None) -> None:
    import torch

    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: must be >= 1")
    if next(model.parameters()).device.type != "cpu":
        return
    if threads is None and sum(p.numel() for p in model.parameters()) < SMALL_MODEL:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def build_strategy(name: str, preset: str | None, params: dict):
    """-> (strategy, the preset name used or None). The default rule: no --preset means the strategy's
    ``project`` preset when it has one; 'none' means the config defaults."""
    from refinery.strategies import get_strategy
    from refinery.strategies.registry import strategy_class

    if preset is None:
        preset = DEFAULT_PRESET if DEFAULT_PRESET in strategy_class(name).presets else None
    elif preset.lower() == "none":
        preset = None
    return get_strategy(name, preset=preset, **params), preset


def strategy_line(strategy, preset: str | None) -> str:
    """'edit (preset project: edit_passes=4 keep_threshold=0.5 ...)': only the values that differ from
    the config defaults, so the line says what ran in a few words."""
    defaults = type(strategy.config)().as_dict()
    changed = [f"{k}={v}" for k, v in strategy.config.as_dict().items() if defaults.get(k) != v]
    head = f"preset {preset}" if preset else "config defaults"
    return f"{strategy.name} ({head}{': ' + ' '.join(changed) if changed else ''})"


def pass_summary(passes: list[tuple[str, dict]]) -> list[str]:
    """One line per run of identical passes: 'passes 3-48 [mask] unmasked=1'.

    ``passes``: (phase, event counts) per forward pass, in order."""
    lines: list[str] = []
    start = 0
    for i in range(1, len(passes) + 1):
        if i < len(passes) and passes[i] == passes[start]:
            continue
        phase, counts = passes[start]
        ops = " ".join(f"{k}={v}" for k, v in counts.items() if v) or "no change"
        span = f"pass {start + 1}" if i - start == 1 else f"passes {start + 1}-{i}"
        lines.append(f"{span} [{phase}] {ops}")
        start = i
    return lines


class TaskChoice:
    """A task's example and where it came from (``label``: 'arith dev #0')."""

    def __init__(self, task, example, label: str):
        self.task, self.example, self.label = task, example, label


def draw_example(name: str, index: int, split: str | None, data_dir: str | None) -> TaskChoice:
    """Example ``index`` of ``name``'s ``split`` (seed 0 order, as the ablation configs draw them)."""
    from refinery.core.tasks import get_task

    if index < 0:
        raise ValueError(f"--example {index}: must be >= 0")
    split = split or ("dev" if name in GENERATED_TASKS else "test")
    task = get_task(name, data_dir=data_dir) if data_dir and name not in GENERATED_TASKS else get_task(name)
    examples = task.examples(split, index + 1, 0)
    if index >= len(examples):
        raise ValueError(f"--example {index}: task {name!r} has only {len(examples)} {split} examples")
    return TaskChoice(task, examples[index], f"{name} {split} #{index}")


def _verdict(choice: TaskChoice | None, text: str) -> str:
    """' [correct]' / ' [wrong: why]' from the task's scorer; '' for a free prompt."""
    if choice is None:
        return ""
    score = choice.task.score(choice.example, text)
    return " [correct]" if score.correct else f" [wrong: {score.error or 'not the answer'}]"
