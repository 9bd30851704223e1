"""``refinery ablate``: run a YAML ablation (strategies x budgets x tasks) into a resumable run directory."""

from __future__ import annotations


def add_parser(sub) -> None:
    from refinery.commands.run_args import add_run_overrides

    p = sub.add_parser("ablate", help="run an ablation config (default: the embedded default) into a run directory",
                       description="Run every (task, strategy, budget, seed) cell of CONFIG. A killed run "
                                   "continues where it stopped when the same command is run again.")
    p.add_argument("config", nargs="?", default=None,
                   help="ablation YAML (default: experiments/ablations/embedded_default.yaml)")
    add_run_overrides(p)
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N examples per task")
    p.add_argument("--only", default=None, metavar="LABEL[,LABEL]",
                   help="run only these strategy entries (labels as in the tables, e.g. masked,edit)")
    p.add_argument("--budgets", default=None, metavar="B[,B]",
                   help="run only the cells at these budgets of CONFIG (e.g. 1/4,1/8); the run directory of the "
                        "whole config takes them, and a later run without --budgets adds the rest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--validate-only", action="store_true", help="check the config (and paths) and stop")
    p.add_argument("--repair", action="store_true",
                   help="first repair a damaged run directory (e.g. two runs wrote to it at once): back up "
                        "rows.jsonl to rows.jsonl.bak-<UTC time>, drop duplicate keys (keeping the first), "
                        "garbage lines and rows whose trace is missing, print what was dropped, then continue "
                        "the run (dropped batches are redone)")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from refinery.experiments.config import DEFAULT_CONFIG, load_config, validate

    config = load_config(args.config or DEFAULT_CONFIG)
    config = config.with_overrides(model=args.model, device=args.device, limit=args.limit,
                                   only=args.only.split(",") if args.only is not None else None,
                                   batch_size=args.batch_size, score_workers=args.score_workers,
                                   budgets=args.budgets.split(",") if args.budgets is not None else None)
    if args.validate_only:
        validate(config, check_paths=True)
        n = len(config.strategies)
        print(f"{config.source}: ok ({len(config.tasks)} tasks, {n} strategy entries, {len(config.budgets)} budgets)")
        return 0
    from refinery.analysis.load import rows_frame
    from refinery.analysis.tables import main_table_markdown
    from refinery.experiments.runner import run_ablation
    from refinery.experiments.store import load_rows

    from refinery.core.torchrun import ProcessLayout

    out = Path(args.out) if args.out else Path("runs") / config.name
    main_rank = ProcessLayout.from_env().is_main  # under torchrun: one look and one table, from rank 0
    if config.protocol is not None:  # a tune winners config: count this look at test in its protocol
        from refinery.experiments.tune import record_test_look

        validate(config, check_paths=True)  # a config that cannot run is not a look
        if main_rank:
            looks = record_test_look(config, out)
            print(f"test look {looks} of the tune protocol named by {config.source}", flush=True)
    run_dir = run_ablation(config, out, progress=not args.no_progress, repair=args.repair,
                           on_repair=lambda report: print(report.repair_line(), flush=True))
    if not main_rank:  # every rank has finished by now; rank 0 prints the table of all shards
        return 0
    rows = load_rows(run_dir)
    print(f"{len(rows)} rows in {run_dir}")
    print(main_table_markdown(rows_frame(rows)))
    return 0
