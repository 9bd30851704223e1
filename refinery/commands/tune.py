"""``refinery tune``: the same number of dev trials for every strategy entry, then a winners config for test."""

from __future__ import annotations


def add_parser(sub) -> None:
    from refinery.commands.run_args import add_run_overrides

    p = sub.add_parser(
        "tune", help="equal-budget tuning on the dev split: every entry gets the same trials; writes winners.yaml",
        description="Expand CONFIG's search spaces into the same number of trials per strategy entry (its "
                    "start, preset + params, is trial 0), run them on the dev split as one resumable ablation, "
                    "pick the winners by the declared rule and write RUN/protocol.json (spaces, sampler, seed, "
                    "every trial's params and dev score, the rule, the winners, test_looks), RUN/winners.yaml "
                    "(each entry's untuned start, LABEL/paper, and its winner on the test split: run it once "
                    "with `refinery ablate RUN/winners.yaml`; every such run is counted in the protocol's "
                    "test_looks) and RUN/trials.md (the trials table).")
    p.add_argument("config", help="tune YAML (e.g. experiments/ablations/embedded_tune.yaml)")
    add_run_overrides(p)
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N dev examples per task")
    p.add_argument("--only", default=None, metavar="LABEL[,LABEL]",
                   help="tune only these strategy entries (their labels in CONFIG, e.g. masked,edit)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--validate-only", action="store_true",
                   help="check the config, draw the trials, check paths and stop (prints trials per entry)")
    p.add_argument("--plan", action="store_true",
                   help="print every entry's drawn trials (the protocol before any run) and stop; needs no "
                        "checkpoint or data")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from refinery.experiments.tune import load_tune, run_tune, trials_markdown

    tune = load_tune(args.config)
    only = args.only.split(",") if args.only is not None else None
    if args.plan:
        from refinery.experiments.tune import plan_record

        print(trials_markdown(plan_record(tune, limit=args.limit, only=only), detail=True), end="")
        return 0
    if args.validate_only:
        from refinery.experiments.config import validate

        experiment = tune.experiment_for(limit=args.limit, only=only, model=args.model, device=args.device,
                                         batch_size=args.batch_size, score_workers=args.score_workers)
        validate(experiment, check_paths=True)
        kept = {s.label.rsplit("/", 1)[0] for s in experiment.strategies}
        print(f"{tune.source}: ok ({len(experiment.tasks)} dev tasks, {len(kept)} strategy entries x {tune.trials} "
              f"trials ({tune.sampler}), {len(experiment.budgets)} budgets, select {tune.select})")
        return 0
    out = Path(args.out) if args.out else Path("runs") / tune.experiment.name
    record = run_tune(tune, out, limit=args.limit, only=only, model=args.model, device=args.device,
                      batch_size=args.batch_size, score_workers=args.score_workers, progress=not args.no_progress)
    from refinery.core.torchrun import ProcessLayout

    if not ProcessLayout.from_env().is_main:  # under torchrun rank 0 prints the protocol of all shards
        return 0
    print(trials_markdown(record))
    if record["winners_config"]:
        print(f"protocol: {out / 'protocol.json'}\nwinners (test split, run once): refinery ablate "
              f"{out / record['winners_config']}")
    return 0
