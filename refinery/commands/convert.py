"""``refinery convert``: turn a LLaDA-8B or ME-DLM safetensors checkpoint into a refinery checkpoint directory."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert a LLaDA-8B / ME-DLM safetensors checkpoint into refinery's format",
        description="Convert SRC (config.json + *.safetensors, single or sharded; LLaDA 'model.transformer.*' or "
                    "ME-DLM Llama-style names) into DST, loadable with `refinery decode --model DST`. Tensors are "
                    "streamed shard by shard, so peak memory is about two output shards, not the model. "
                    "Pickle files are refused.")
    p.add_argument("src", help="source checkpoint directory")
    p.add_argument("dst", help="output directory (created)")
    p.add_argument("--layout", choices=("auto", "llada", "medlm"), default="auto",
                   help="source key naming (default: detected from the key names)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="cast all tensors (default auto: keep the stored dtype)")
    p.add_argument("--max-shard-size", default="2GB",
                   help="largest output shard, e.g. 16MB, 5GB, 2GiB (default 2GB: 8 shards for 8B in bf16; "
                        "peak RAM is about twice one shard)")
    p.add_argument("--add-next-token-head", choices=("copy", "fresh"), default=None,
                   help="give a mask-only checkpoint the ME-DLM next-token head: a copy of the output head, "
                        "or a fresh seeded normal init")
    p.add_argument("--delete-token", default="auto",
                   help="tokenizer token renamed to <|del|> (id kept) and recorded as delete_token_id; "
                        "'none' for no delete token (default auto: <|reserved_token_0|>, ME-DLM's choice for "
                        "LLaDA, when the result has a next-token head; none for a mask-only result)")
    p.add_argument("--delete-token-id", type=int, default=None,
                   help="delete token id when SRC has no tokenizer")
    p.add_argument("--seed", type=int, default=0, help="seed of a fresh next-token head")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in DST")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from refinery.core.checkpoint import parse_dtype
    from refinery.core.convert import convert_checkpoint

    delete_token = None if args.delete_token.lower() == "none" else args.delete_token
    report = convert_checkpoint(
        args.src, args.dst, layout=None if args.layout == "auto" else args.layout, dtype=parse_dtype(args.dtype),
        max_shard_size=args.max_shard_size, add_next_token_head=args.add_next_token_head,
        delete_token=delete_token, delete_token_id=args.delete_token_id, seed=args.seed,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    c = report.config
    print(f"layout {report.layout}: {report.n_tensors} tensors, {report.n_params / 1e6:.1f}M params -> "
          f"{args.dst} ({len(report.shards)} shard(s))")
    print(f"  d_model {c.d_model}  layers {c.n_layers}  heads {c.n_heads}/{c.n_kv_heads}  vocab {c.vocab_size}  "
          f"next-token head: {report.next_token_head}")
    print(f"  mask {c.mask_token_id}  eos {c.eos_token_id}  delete {c.delete_token_id}  "
          f"tokenizer: {'saved' if report.tokenizer else 'none in source'}")
    if report.ignored:
        print(f"  skipped {len(report.ignored)} derived buffer(s), e.g. {report.ignored[0]}")
    return 0
