"""Rebuild the embedded checkpoints from nothing: data + tokenizer, then Stage 1, 2 and 3.

    python -m refinery.experiments.embedded.build --root runs/embedded --minutes 7      (one GPU)
    python -m refinery.experiments.embedded.build --root /tmp/e --device cpu --steps 1:5,2:5,3:5 --n-records 2000

Each stage is one ``refinery train experiments/train/embedded_stageN.yaml`` process with the
paths pointed into ``--root``. With ``--minutes``, Stage 1 runs its configured steps and its
measured seconds per step size Stages 2 and 3 to fit the rest of the time (Stage 3 is charged
``--stage3-cost`` Stage-2 steps per step); the steps actually run are written to
``ROOT/build.json`` for the model cards; ``python -m refinery.experiments.embedded.ship`` writes
``ROOT/stage2`` and the Stage-3 model into ``core/assets/embedded/`` in bf16 to ship them.
``--stages 1,2`` stops after Stage 2 (to continue Stage 3 in a later command, within a 10-minute
device limit).

``--finals NAME=CONFIG[:STEPS],...`` trains several final models from ``ROOT/stage2`` at the same time
(one process each on the one GPU: at this size a step is mostly kernel launches, so they interleave),
each into ``ROOT/NAME`` and capped at ``--final-seconds``; ``--references N`` also writes
``ROOT/data_refs`` (valid alternative solutions, for ``nearest_reference``). The space-2 build of the
shipped models (model cards) is

    python -m refinery.experiments.embedded.build --root runs/embedded --space 2 --workers 14 --references 32 \
        --steps 1:1200,2:2000 --stages 1,2 --final-seconds 300 --finals \
        stage3=experiments/train/embedded_stage3_v2.yaml,stage3_medlm=experiments/train/embedded_stage3_medlm.yaml,\
        r2ft_conv=experiments/train/embedded_r2ft_conv.yaml
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {s: Path(__file__).resolve().parents[1] / "train" / f"embedded_stage{s}.yaml" for s in (1, 2, 3)}


def step_seconds(out: Path) -> float:
    """Median seconds per optimiser step of a finished stage (from its metrics.jsonl)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return statistics.median(r["seconds"] for r in rows[len(rows) // 10:])


def train_cmd(config: str | Path, out: Path, data: Path, sets: dict, steps=None, seconds=None) -> list[str]:
    """The ``refinery train`` command of one stage: CONFIG into ``out`` on ``data``, ``sets`` as --set KEY=path."""
    cmd = [sys.executable, "-m", "refinery", "train", str(config), "--out", str(out),
           "--set", f"data.train_files=[{json.dumps(str(data))}]"]
    for key, path in sets.items():
        cmd += ["--set", f"{key}={json.dumps(str(path))}"]
    cmd += ["--max-steps", str(steps)] if steps else []
    cmd += ["--max-seconds", str(seconds)] if seconds else []
    return cmd


def stage_report(name: str, out: Path, seconds: float) -> dict:
    """Steps run, seconds and median step seconds of a finished stage; printed as one JSON line."""
    n = sum(1 for _ in (out / "metrics.jsonl").open())
    report = {"steps": n, "seconds": round(seconds, 1), "step_seconds": round(step_seconds(out), 4)}
    print(json.dumps({name: report}), flush=True)
    return report


def train(stage: int, root: Path, steps: int | None, extra: list[str]) -> float:
    data = root / "data" / ("pretrain.jsonl" if stage == 1 else "sft.jsonl")
    sets = {"tokenizer": root / "data" / "tokenizer"} if stage == 1 else {"model.init_from": root / f"stage{stage - 1}"}
    start = time.monotonic()
    subprocess.run(train_cmd(CONFIGS[stage], root / f"stage{stage}", data, sets, steps) + extra, check=True)
    return time.monotonic() - start


def train_finals(root: Path, finals: str, seconds: float | None, extra: list[str]) -> dict:
    """Train every ``NAME=CONFIG[:STEPS]`` of ``finals`` from ``root/stage2`` at once; returns their reports."""
    import yaml

    procs = {}
    for item in finals.split(","):
        name, _, spec = item.partition("=")
        config, _, steps = spec.partition(":")
        data = Path(yaml.safe_load(Path(config).read_text())["data"]["train_files"][0])
        data = root / data.parent.name / data.name  # runs/embedded/data_refs/sft.jsonl -> ROOT/data_refs/sft.jsonl
        cmd = train_cmd(config, root / name, data, {"model.init_from": root / "stage2"}, steps, seconds)
        log = open(root / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd + extra, stdout=log, stderr=subprocess.STDOUT), time.monotonic(), log)
    report = {}
    for name, (proc, start, log) in procs.items():
        code = proc.wait()
        log.close()
        if code != 0:
            raise SystemExit(f"final model {name!r} failed (exit {code}); see {root / (name + '.log')}")
        report[name] = stage_report(name, root / name, time.monotonic() - start)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("runs/embedded"))
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget for the three stages")
    ap.add_argument("--steps", default=None, help="fixed steps per stage, e.g. 1:600,2:3000,3:1500")
    ap.add_argument("--stage3-cost", type=float, default=2.0, help="Stage-3 step cost in Stage-2 steps")
    ap.add_argument("--n-records", type=int, default=60_000, help="training records per task and kind")
    ap.add_argument("--workers", type=int, default=4, help="processes generating the data")
    ap.add_argument("--rename-prob", type=float, default=0.0,
                    help="pycode: share of records whose argument is renamed to a name no evaluation problem uses")
    ap.add_argument("--device", default=None)
    ap.add_argument("--stages", default="1,2,3", help="which stages to run, e.g. 1,2")
    ap.add_argument("--space", type=int, default=1, choices=(1, 2), help="the embedded tasks' problem space")
    ap.add_argument("--references", type=int, default=0,
                    help="also write ROOT/data_refs: 25,000 SFT records per task with this many drawn solutions each")
    ap.add_argument("--finals", default=None, help="NAME=CONFIG[:STEPS],... trained at once from ROOT/stage2")
    ap.add_argument("--final-seconds", type=float, default=None,
                    help="time cap of each final model's training (with --minutes: at most what is left of it)")
    args, extra = ap.parse_known_args()
    if args.device:
        extra += ["--device", args.device]
    fixed = {int(k): int(v) for k, v in (kv.split(":") for kv in args.steps.split(","))} if args.steps else {}
    t0 = time.monotonic()
    from refinery.experiments.embedded.prepare import prepare

    counts = prepare(args.root / "data", args.n_records, args.n_records, vocab_size=1024, seed=0, workers=args.workers,
                     rename_prob=args.rename_prob, space=args.space)
    if args.references:
        counts["refs"] = prepare(args.root / "data_refs", 10, 25_000, vocab_size=1024, seed=0, workers=args.workers,
                                 references=args.references, rename_prob=args.rename_prob, space=args.space)
    report = {"data": counts, "space": args.space, "prepare_seconds": round(time.monotonic() - t0, 1), "stages": {}}
    print(json.dumps({"prepare_seconds": report["prepare_seconds"]}), flush=True)
    budget_end = t0 + 60 * args.minutes if args.minutes else None
    stages = sorted({int(s) for s in args.stages.split(",")})
    if not set(stages) <= {1, 2, 3}:
        raise SystemExit(f"--stages: expected a comma-separated subset of 1,2,3, got {args.stages!r}")
    for stage in stages:
        steps = fixed.get(stage)
        if steps is None and budget_end is not None and stage > 1:
            per_step = step_seconds(args.root / "stage1") * (args.stage3_cost if stage == 3 else 1.0)
            share = 0.55 if stage == 2 else 1.0  # of the time left: Stage 2 a bit over half, Stage 3 the rest
            steps = max(10, int(share * (budget_end - time.monotonic() - 20) / per_step))
        seconds = train(stage, args.root, steps, extra)
        report["stages"][stage] = stage_report(f"stage{stage}", args.root / f"stage{stage}", seconds)
    if args.finals:
        cap = args.final_seconds
        if budget_end is not None:  # the finals share what is left of --minutes (10 s kept for saving)
            left = budget_end - time.monotonic() - 10
            cap = left if cap is None else min(cap, left)
        report["finals"] = train_finals(args.root, args.finals, cap, extra)
    (args.root / "build.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
