"""Rebuild the embedded checkpoints from nothing: data + tokenizer, then Stage 1, 2 and 3.

    python -m refinery.experiments.embedded.build --root runs/embedded --minutes 7      (one GPU)
    python -m refinery.experiments.embedded.build --root /tmp/e --device cpu --steps 1:5,2:5,3:5 --n-records 2000

Each stage is one ``refinery train experiments/train/embedded_stageN.yaml`` process with the
paths pointed into ``--root``. With ``--minutes``, Stage 1 runs its configured steps and its
measured seconds per step size Stages 2 and 3 to fit the rest of the time (Stage 3 is charged
``--stage3-cost`` Stage-2 steps per step); the steps actually run are written to
``ROOT/build.json`` for the model cards; ``python -m refinery.experiments.embedded.ship`` writes
``ROOT/stage2`` and the Stage-3 model into ``core/assets/embedded/`` in bf16 to ship them.
``--stages 1,2`` stops after Stage 2; ``--stages none`` runs no stage (with ``--finals``: only the final
models, from an existing ``ROOT/stage2``). A stage or final whose starting model is neither in ROOT nor
trained by the same command is an error before anything starts.

``--finals NAME=CONFIG[:STEPS],...`` trains several final models from ``ROOT/stage2`` at the same time
(one process each on the one GPU: at this size a step is mostly kernel launches, so they interleave),
each into ``ROOT/NAME`` and capped at ``--final-seconds`` (counted from the start of its trainer, so
setup is included; a capped final still saves its model, and build.json reports its steps and max_steps);
``--references N`` also writes ``ROOT/data_refs`` (valid alternative solutions, for ``nearest_reference``).

Data is reused, not rebuilt, when ``ROOT/data`` (and ``ROOT/data_refs``) hold a complete prepare made with
the same data options (``--n-records --space --rename-prob --references``) by the same task generators: its
manifest ``prepare.json`` is written last, so a killed prepare is rebuilt. ``ROOT/data`` made with other
options is an error when the command trains from models already in ROOT (a stage or final runs, Stage 1
does not), since they were trained on it (remove its ``prepare.json`` to rebuild it anyway); otherwise it
is rebuilt. A command that runs Stage 1
writes a new ``ROOT/build.json``; any other merges into it: the reports of the stages it reruns, of every
later stage and of the finals that start from them are replaced, finals are added by name.

The space-2 build of the shipped models (model cards) is two device calls of at most 10 minutes each, the
second started before the machine lets ROOT go (same data options, so it reuses the data):

    DATA="--root runs/embedded --space 2 --workers 14 --references 32"
    python -m refinery.experiments.embedded.build $DATA --steps 1:1200,2:2000 --stages 1,2
    FINALS=stage3=experiments/train/embedded_stage3_v2.yaml,stage3_medlm=experiments/train/embedded_stage3_medlm.yaml
    FINALS=$FINALS,r2ft_conv=experiments/train/embedded_r2ft_conv.yaml
    python -m refinery.experiments.embedded.build $DATA --stages none --final-seconds 300 --finals $FINALS
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from refinery.core.errors import UsageError, write_json_atomic
from refinery.experiments.embedded.prepare import MANIFEST, data_params, prepare, prepared

log = logging.getLogger(__name__)

CONFIGS = {s: Path(__file__).resolve().parents[1] / "train" / f"embedded_stage{s}.yaml" for s in (1, 2, 3)}
RESERVED = ("data", "data_refs", "stage1", "stage2")  # final-model names that would overwrite this build's inputs


@dataclass(frozen=True)
class Final:
    """One ``NAME=CONFIG[:STEPS]`` of ``--finals``: trained from ROOT/stage2 into ROOT/NAME on ``data``."""

    name: str
    config: Path
    steps: int | None
    data: Path


def parse_stages(text: str) -> list[int]:
    """``--stages``: ``"none"`` -> ``[]``, ``"2,1"`` -> ``[1, 2]``; anything else is a UsageError."""
    if text == "none":
        return []
    try:
        stages = sorted({int(s) for s in text.split(",")})
    except ValueError:
        stages = []
    if not stages or not set(stages) <= {1, 2, 3}:
        raise UsageError(f"--stages: expected 'none' or a comma-separated subset of 1,2,3, got {text!r}")
    return stages


def parse_steps(text: str | None) -> dict[int, int]:
    """``--steps 1:600,2:3000`` -> ``{1: 600, 2: 3000}``."""
    if not text:
        return {}
    try:
        steps = {int(k): int(v) for k, v in (kv.split(":") for kv in text.split(","))}
    except ValueError:  # a non-number, or an item without exactly one ':'
        steps = {}
    if not steps or not set(steps) <= {1, 2, 3} or min(steps.values()) < 1:
        raise UsageError(f"--steps: expected STAGE:STEPS,... with stages in 1,2,3 and steps >= 1, got {text!r}")
    return steps


def parse_finals(text: str, root: Path, stages: list[int], references: int) -> list[Final]:
    """``--finals`` -> one :class:`Final` each, every name, config, step count and data file checked."""
    from refinery.experiments.config import read_yaml_file

    finals: list[Final] = []
    for item in text.split(","):
        name, eq, spec = item.partition("=")
        config, _, steps = spec.partition(":")
        where = f"--finals: {item!r}"
        if not (eq and name and config) or "/" in name or (steps and not (steps.isdigit() and int(steps) > 0)):
            raise UsageError(f"{where}: expected NAME=CONFIG[:STEPS] (NAME a directory name, STEPS >= 1)")
        if name in RESERVED or name in {f.name for f in finals} or name in {f"stage{s}" for s in stages}:
            raise UsageError(f"{where}: ROOT/{name} is this build's input, a stage it runs or another final")
        data = read_yaml_file(config, "training config")
        try:
            data = Path(data["data"]["train_files"][0])
        except (KeyError, TypeError, IndexError):
            raise UsageError(f"{config}: data.train_files: expected a list of files") from None
        data = root / data.parent.name / data.name  # runs/embedded/data_refs/sft.jsonl -> ROOT/data_refs/sft.jsonl
        written = data.parent.name == "data" or (data.parent.name == "data_refs" and references)
        if not (written or data.is_file()):
            hint = " (ROOT/data_refs needs --references N)" if data.parent.name == "data_refs" else ""
            raise UsageError(f"{where}: its data {data} does not exist and this build does not write it{hint}")
        finals.append(Final(name, Path(config), int(steps) if steps else None, data))
    return finals


def check_inputs(root: Path, stages: list[int], finals: list[Final]) -> None:
    """Each stage's and final's starting model is finished in ROOT or trained earlier by this command."""
    needs = [(f"Stage {s}", root / f"stage{s - 1}") for s in stages if s > 1 and s - 1 not in stages]
    if finals and 2 not in stages:
        needs.append(("--finals", root / "stage2"))
    for who, path in needs:
        if not (path / "train_config.json").is_file():  # the trainer writes it last, after the model
            raise UsageError(f"{path}: no finished model there (no train_config.json), and {who} starts from "
                             "it; train it first (e.g. --stages 1,2)")


def data_plan(args: argparse.Namespace, stages: list[int], finals: list[Final]) -> list[tuple]:
    """``(key, dir, prepare arguments, counts to reuse or None)`` for ROOT/data and, with --references, ROOT/data_refs.

    Data made with other options is an error when this command trains from models already in ROOT (a
    stage or final runs, Stage 1 does not): they were trained on the data there. ROOT/data_refs feeds
    only the finals, which this command retrains: it is rebuilt.
    """
    trains_on_old = bool(stages or finals) and 1 not in stages
    plan = [("data", args.root / "data", data_params(args.n_records, args.n_records, 1024, 0, 0, args.rename_prob,
                                                     args.space))]
    if args.references:
        plan.append(("refs", args.root / "data_refs",
                     data_params(10, 25_000, 1024, 0, args.references, args.rename_prob, args.space)))
    checked = []
    for key, out, params in plan:
        counts, why = prepared(out, params)
        if counts is None and why.startswith("differs") and key == "data" and trains_on_old:
            raise UsageError(f"{why[len('differs: '):]}; the models this build starts from were trained on it: "
                             f"give the same data options, run Stage 1 too, or remove {out / MANIFEST}")
        if counts is None:
            log.info("%s: preparing (%s)", out, why)
        checked.append((key, out, params, counts))
    return checked


def run_data(plan: list[tuple], workers: int) -> tuple[dict, bool]:
    """Prepare what ``plan`` has no counts for; returns the counts (refs under "refs") and whether any was built."""
    counts: dict = {}
    for key, out, params, reuse in plan:
        if reuse is not None:
            log.info("%s: reusing the data prepared with the same options (%s)", out, MANIFEST)
        found = reuse if reuse is not None else prepare(out, workers=workers, **params)
        if key == "data":
            counts.update(found)
        else:
            counts[key] = found
    return counts, any(reuse is None for *_, reuse in plan)


def start_report(root: Path, stages: list[int]) -> dict:
    """What ``ROOT/build.json`` holds before this command adds to it (see the module docstring)."""
    path = root / "build.json"
    if 1 in stages or not path.is_file():
        return {"stages": {}}
    try:
        report = json.loads(path.read_text())
        kept = {k: v for k, v in report.get("stages", {}).items() if not stages or int(k) < stages[0]}
        finals = report.get("finals", {})
    except (json.JSONDecodeError, AttributeError, ValueError) as e:
        raise UsageError(f"{path}: not a build report ({e}); remove it to start a new one") from None
    report["stages"] = kept
    if stages:  # a rerun Stage 2 makes every final stale; a rerun Stage 3 the final that lives in ROOT/stage3
        report["finals"] = {k: v for k, v in finals.items() if stages[0] > 2 and k != "stage3"}
    return report


def save_report(root: Path, report: dict) -> None:
    """Write ``ROOT/build.json`` now, so a later failure loses nothing already trained."""
    write_json_atomic(root / "build.json", report, indent=2)


def step_seconds(out: Path) -> float | None:
    """Median seconds per optimiser step of a finished stage (from its metrics.jsonl); None if it ran no step."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return statistics.median(r["seconds"] for r in rows[len(rows) // 10:]) if rows else None


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
    """Steps run (of ``max_steps``: fewer when a time cap cut it), seconds and median step seconds of a finished
    stage; printed as one JSON line."""
    per_step = step_seconds(out)
    report = {"steps": sum(1 for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()),
              "max_steps": json.loads((out / "train_config.json").read_text())["optim"]["max_steps"],
              "seconds": round(seconds, 1), "step_seconds": None if per_step is None else round(per_step, 4)}
    print(json.dumps({name: report}), flush=True)
    return report


def train(stage: int, root: Path, steps: int | None, extra: list[str]) -> float:
    data = root / "data" / ("pretrain.jsonl" if stage == 1 else "sft.jsonl")
    sets = {"tokenizer": root / "data" / "tokenizer"} if stage == 1 else {"model.init_from": root / f"stage{stage - 1}"}
    start = time.monotonic()
    subprocess.run(train_cmd(CONFIGS[stage], root / f"stage{stage}", data, sets, steps) + extra, check=True)
    return time.monotonic() - start


def train_finals(root: Path, finals: list[Final], cap: float | None, extra: list[str]) -> tuple[dict, list[str]]:
    """Train every final from ``root/stage2`` at once; returns the reports of those that finished and the failed names.

    Each is timed from its start to its own exit (polled), so a quick one is not charged a slow one's time.
    """
    running = {}
    for f in finals:
        cmd = train_cmd(f.config, root / f.name, f.data, {"model.init_from": root / "stage2"}, f.steps, cap)
        out = open(root / f"{f.name}.log", "w")
        running[f.name] = (subprocess.Popen(cmd + extra, stdout=out, stderr=subprocess.STDOUT), time.monotonic(), out)
    reports, failed = {}, []
    while running:
        time.sleep(0.2)
        for name, (proc, start, out) in list(running.items()):
            if proc.poll() is None:
                continue
            seconds = time.monotonic() - start
            out.close()
            del running[name]
            if proc.returncode == 0:
                reports[name] = stage_report(name, root / name, seconds)
            else:
                failed.append(name)
                log.error("final model %r failed (exit %d); see %s", name, proc.returncode, root / f"{name}.log")
    return reports, failed


def parser() -> argparse.ArgumentParser:
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
    ap.add_argument("--stages", default="1,2,3",
                    help="stages to run, e.g. 1,2; 'none' runs none (data only, or with --finals only the finals)")
    ap.add_argument("--space", type=int, default=1, choices=(1, 2), help="the embedded tasks' problem space")
    ap.add_argument("--references", type=int, default=0,
                    help="also write ROOT/data_refs: 25,000 SFT records per task with this many drawn solutions each")
    ap.add_argument("--finals", default=None, help="NAME=CONFIG[:STEPS],... trained at once from ROOT/stage2")
    ap.add_argument("--final-seconds", type=float, default=None,
                    help="time cap of each final model's training (with --minutes: at most what is left of it)")
    return ap


def build(args: argparse.Namespace, extra: list[str]) -> int:
    """The whole build; every argument and input is checked before the first file is written."""
    stages, fixed = parse_stages(args.stages), parse_steps(args.steps)
    finals = parse_finals(args.finals, args.root, stages, args.references) if args.finals else []
    check_inputs(args.root, stages, finals)
    plan = data_plan(args, stages, finals)
    report = start_report(args.root, stages)
    extra = extra + (["--device", args.device] if args.device else [])
    t0 = time.monotonic()
    counts, built = run_data(plan, args.workers)
    report.update(data=counts, space=args.space)
    if built or "prepare_seconds" not in report:  # reused data keeps the time it took to build
        report["prepare_seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps({"prepare_seconds": round(time.monotonic() - t0, 1)}), flush=True)
    save_report(args.root, report)
    budget_end = t0 + 60 * args.minutes if args.minutes else None
    for stage in stages:
        steps = fixed.get(stage)
        if steps is None and budget_end is not None and stage > 1:
            per_step = step_seconds(args.root / "stage1") * (args.stage3_cost if stage == 3 else 1.0)
            share = 0.55 if stage == 2 else 1.0  # of the time left: Stage 2 a bit over half, Stage 3 the rest
            steps = max(10, int(share * (budget_end - time.monotonic() - 20) / per_step))
        seconds = train(stage, args.root, steps, extra)
        report["stages"][str(stage)] = stage_report(f"stage{stage}", args.root / f"stage{stage}", seconds)
        save_report(args.root, report)
    if not finals:
        return 0
    cap = args.final_seconds
    if budget_end is not None:  # the finals share what is left of --minutes (10 s kept for saving)
        left = budget_end - time.monotonic() - 10
        if left <= 0:
            print(f"build: error: --minutes {args.minutes} spent before the finals; nothing trained is lost "
                  f"({args.root / 'build.json'})", file=sys.stderr)
            return 1
        cap = left if cap is None else min(cap, left)
    done, failed = train_finals(args.root, finals, cap, extra)
    report.setdefault("finals", {}).update(done)
    for name in failed:  # its directory was written over: an older report of it no longer holds
        report["finals"].pop(name, None)
    save_report(args.root, report)
    if failed:
        print(f"build: error: final model(s) {', '.join(failed)} failed; see {args.root}/NAME.log", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return build(args, extra)
    except (UsageError, FileNotFoundError) as e:  # bad input: one line, exit 2 (as ``refinery`` does)
        print(f"build: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
