"""``refinery decode``: run one strategy on one prompt and show the passes."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("decode", help="generate from a prompt with one strategy and show each pass")
    p.add_argument("prompt", help="user prompt (wrapped in the chat template unless --raw)")
    p.add_argument("--model", default="embedded", help="checkpoint directory or shipped name (default: embedded)")
    p.add_argument("--strategy", default="masked", help="registered strategy name (see `refinery strategies`)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy parameter, value parsed as JSON when possible (repeatable)")
    p.add_argument("--budget", default="1/1", help="forward passes per generated token, e.g. 1/8")
    p.add_argument("--gen-length", type=int, default=64, help="tokens to generate")
    p.add_argument("--cache", default="none", choices=("none", "prefix", "dual"),
                   help="KV cache: none recomputes every column each pass; prefix keeps the columns before the "
                        "strategy's block; dual also those after it (Fast-dLLM; approximate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32 / bf16 / fp16 (default: fp32 on a CPU, as stored on a GPU)")
    p.add_argument("--raw", action="store_true", help="use the prompt as is, without the chat template")
    p.add_argument("--quiet", action="store_true", help="print only the output")
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
    from core.checkpoint import load_model_and_tokenizer, parse_dtype
    from core.decode import check_cache, generate
    from core.tokenizer import decode_response, render_prompt
    from strategies import get_strategy

    strategy = get_strategy(args.strategy, **parse_params(args.param))
    check_cache(strategy, args.cache)  # before loading the model: a refused mode fails at once
    model, tok = load_model_and_tokenizer(args.model, args.device, parse_dtype(args.dtype))
    ids = tok.encode(args.prompt, add_special_tokens=False) if args.raw else \
        render_prompt(tok, [{"role": "user", "content": args.prompt}])
    res = generate(model, [ids], args.gen_length, strategy, args.budget, seed=args.seed, cache=args.cache)
    row = res.tokens[0, : int(res.lengths[0])].tolist()
    text = decode_response(tok, row)
    if args.quiet:
        print(text)
        return 0
    print(f"strategy {strategy!r}  budget {args.budget}  NFE {int(res.nfe[0])}/{res.max_nfe}  "
          f"{res.seconds:.2f}s" + (f"  cache {args.cache}" if args.cache != "none" else ""))
    for s, rec in enumerate(res.trace.records):
        c = rec.counts()
        ops = " ".join(f"{k}={v}" for k, v in c.items() if v)
        ran = f" ({rec.cache})" if rec.cache else ""
        print(f"  pass {s + 1:3d} [{rec.phase}]{ran} {ops or 'no change'}")
    print("output:")
    print(text)
    return 0
