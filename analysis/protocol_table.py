"""The results table of a tuning protocol: every strategy entry's preset and tuned rows on the test split.

    python -m refinery.analysis.protocol_table runs/embedded_tune runs/embedded_tune_winners [--out table.md]

RUN_TUNE is a ``refinery tune`` run directory (its ``protocol.json``: trials, sampler, rule, every trial's
dev score, the winners, ``test_looks``); RUN_TEST the ``refinery ablate`` run of its ``winners.yaml``,
which holds each entry's untuned start (``LABEL/paper``) and its winner (``LABEL``, or ``LABEL/tNN`` per
budget under ``select: per_budget``). The markdown gives, per task:

- strict accuracy (%) per entry x {preset, tuned} x budget with a Wilson 95% interval;
- the paired gain over the baseline in points, with the problems only the row / only the baseline solves
  (same problem and seed) and the exact two-sided McNemar p-value of that split. The baseline is the
  mask-only entry at its paper preset (``masked/paper``: LLaDA's sampler as published, on the file's model),
  so every tuned setting, the tuned mask-only one included, is measured against one untuned reference;

then the winning settings (what changed from the preset, dev scores) and the trials-per-strategy table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from refinery.analysis.load import budget_order, rows_frame
from refinery.analysis.tables import mcnemar_exact, to_markdown, wilson_interval, write_or_print

log = logging.getLogger(__name__)

PAIR_KEY = ["task", "budget", "example_id", "seed"]


def load_protocol_run(run_tune: str | Path, run_test: str | Path) -> tuple[dict, pd.DataFrame]:
    """-> (the protocol record, the test rows with ``entry`` = the tune entry's label and ``setting`` =
    'paper' (its untuned start) or 'tuned'). Refuses rows of another split or labels the protocol
    does not know."""
    from refinery.experiments.store import load_rows
    from refinery.experiments.tune import PROTOCOL_FILE, read_protocol

    record = read_protocol(Path(run_tune) / PROTOCOL_FILE)
    if record is None:
        raise FileNotFoundError(f"{run_tune}: no {PROTOCOL_FILE} (not a refinery tune run directory)")
    df = rows_frame(load_rows(run_test), run=str(run_test))
    if not len(df):
        raise ValueError(f"{run_test}: no rows")
    splits = sorted(set(df["split"]))
    if splits != ["test"]:
        raise ValueError(f"{run_test}: rows of split {splits}; the protocol table reads the winners' test run")
    where = {}
    for e in record["entries"]:
        where[f"{e['label']}/{e['preset'] or 'start'}"] = (e["label"], "paper")
        where[e["label"]] = (e["label"], "tuned")
        where.update({t["label"]: (e["label"], "tuned") for t in e["trials"]})
    unknown = sorted(set(df["label"]) - set(where))
    if unknown:
        raise ValueError(f"{run_test}: labels {unknown} are no entry of the protocol {run_tune}")
    df["entry"] = [where[lab][0] for lab in df["label"]]
    df["setting"] = [where[lab][1] for lab in df["label"]]
    return record, df


def accuracy_cells(df: pd.DataFrame) -> pd.DataFrame:
    """One line per (task, entry, setting, budget): n, k, acc, ci_lo, ci_hi (fractions)."""
    out = []
    for (task, entry, setting, budget), g in df.groupby(["task", "entry", "setting", "budget"], sort=False):
        n, k = len(g), int(g["correct"].sum())
        lo, hi = wilson_interval(k, n)
        out.append(dict(task=task, entry=entry, setting=setting, budget=budget, n=n, k=k, acc=k / n,
                        ci_lo=lo, ci_hi=hi))
    return pd.DataFrame(out)


def paired_gains(df: pd.DataFrame, baseline: tuple[str, str]) -> pd.DataFrame:
    """Per (task, entry, setting, budget) other than ``baseline`` (entry, setting): the gain in points over
    the baseline on the problems both ran, wins / losses (only this row / only the baseline solves) and
    the exact McNemar p-value."""
    base = df[(df["entry"] == baseline[0]) & (df["setting"] == baseline[1])]
    if not len(base):
        raise ValueError(f"no test rows of the baseline {baseline[0]} ({baseline[1]})")
    solved = base.drop_duplicates(PAIR_KEY).set_index(PAIR_KEY)["correct"].rename("base_correct")
    out = []
    for (task, entry, setting, budget), g in df.groupby(["task", "entry", "setting", "budget"], sort=False):
        if (entry, setting) == baseline:
            continue
        pair = g.drop_duplicates(PAIR_KEY).join(solved, on=PAIR_KEY, how="inner")
        if not len(pair):
            continue
        wins = int((pair["correct"] & ~pair["base_correct"]).sum())
        losses = int((~pair["correct"] & pair["base_correct"]).sum())
        gain = 100 * (pair["correct"].mean() - pair["base_correct"].mean())
        out.append(dict(task=task, entry=entry, setting=setting, budget=budget, paired=len(pair), gain=gain,
                        wins=wins, losses=losses, p_value=mcnemar_exact(wins, losses)))
    return pd.DataFrame(out)


def _grid(cells: pd.DataFrame, text: pd.Series, budgets: list[str], record: dict) -> pd.DataFrame:
    """Lines (entry, model, setting) in protocol order, one column per budget, cells from ``text``."""
    models = {e["label"]: e.get("model") or record["model"] for e in record["entries"]}
    order = {e["label"]: i for i, e in enumerate(record["entries"])}
    frame = cells.assign(cell=text.values)
    wide = frame.pivot_table(index=["entry", "setting"], columns="budget", values="cell", aggfunc="first")
    wide = wide[[b for b in budgets if b in wide.columns]].reset_index()
    wide = wide.sort_values(["entry", "setting"], key=lambda c: c.map(order) if c.name == "entry" else
                            c.map({"paper": 0, "tuned": 1}), kind="stable")
    wide.insert(1, "model", wide["entry"].map(models))
    return wide.fillna("").set_index(["entry", "model", "setting"])


def winners_markdown(record: dict) -> str:
    """Per entry: the winning trial(s), the parameters it changed from the start, dev scores."""
    lines = ["| entry | strategy | model | winner | changed from the start (the preset) | dev % start -> winner |",
             "|---|---|---|---|---|---|"]
    for e in record["entries"]:
        start = e["trials"][0]
        for budget, i in e["winners"].items():
            won = e["trials"][i]
            changed = {k: v for k, v in won["params"].items() if start["params"].get(k) != v}
            when = "" if budget == "*" else f" at {budget}"
            dev = [t["dev"] and (t["dev"]["mean"] if budget == "*" else t["dev"]["per_budget"].get(budget))
                   for t in (start, won)]
            shown = " -> ".join("-" if d is None else f"{100 * d:.1f}" for d in dev)
            lines.append(f"| {e['label']} | {e['strategy']} | {e.get('model') or record['model']} | "
                         f"t{i:02d}{when} | {_params(changed) if changed else '(none: the start won)'} | {shown} |")
    return "\n".join(lines)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in params.items())


def protocol_markdown(run_tune: str | Path, run_test: str | Path,
                      baseline: tuple[str, str] = ("masked", "paper")) -> str:
    """The whole markdown (see the module docstring)."""
    from refinery.experiments.tune import trials_markdown

    record, df = load_protocol_run(run_tune, run_test)
    budgets = budget_order(df)
    cells = accuracy_cells(df)
    base_name = f"`{baseline[0]}` at its {baseline[1]} setting"
    try:
        gains = paired_gains(df, baseline)
    except ValueError as e:  # e.g. a test run of some entries only (--only): the accuracies still stand
        log.warning("no gains: %s", e)
        gains, base_name = pd.DataFrame(), f"none ({e})"
    parts = [_header(record, df, run_tune, run_test, base_name)]
    for task in dict.fromkeys(df["task"]):
        c = cells[cells["task"] == task]
        n = df[df["task"] == task]["example_id"].nunique()
        text = c.apply(lambda r: f"{100 * r.acc:.1f} [{100 * r.ci_lo:.1f}, {100 * r.ci_hi:.1f}]", axis=1)
        parts.append(f"### {task}: strict accuracy % [Wilson 95%], {n} test problems\n\n"
                     + to_markdown(_grid(c, text, budgets, record)))
        g = gains[gains["task"] == task] if len(gains) else gains
        if len(g):
            text = g.apply(lambda r: f"{r.gain:+.1f} ({r.wins}/{r.losses}, p={r.p_value:.2g})", axis=1)
            parts.append(f"### {task}: paired gain over {base_name} (points; problems only this row / only "
                         f"the baseline solves, exact McNemar p)\n\n" + to_markdown(_grid(g, text, budgets, record)))
    parts.append("### Winning settings (chosen on dev)\n\n" + winners_markdown(record))
    parts.append("### Trials per strategy (dev)\n\n" + trials_markdown(record).rstrip())
    return "\n\n".join(parts) + "\n"


def _header(record: dict, df: pd.DataFrame, run_tune, run_test, base_name: str) -> str:
    looks = record.get("test_looks", 0)
    dev = ", ".join(f"{t['name']} n={t.get('n', 'all')}" for t in record["tasks"])
    test = ", ".join(f"{t} n={df[df['task'] == t]['example_id'].nunique()}" for t in dict.fromkeys(df["task"]))
    return (f"Protocol `{Path(run_tune) / 'protocol.json'}` (config sha256 {record['config_sha256'][:12]}): "
            f"{record['trials']} dev trials per entry, sampler {record['sampler']} (seed {record['seed']}), "
            f"selection `{record['select']}` (ties: {record['tie_break']}) declared before the run; dev {dev}"
            + (f" (--limit {record['limit']})" if record.get("limit") else "") + f". Test run `{run_test}`: "
            f"{test}, decode seeds {sorted(set(df['seed']))}. Times the winners were run on test: {looks}. "
            f"Baseline of the gains: {base_name}.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refinery.analysis.protocol_table", description=__doc__.split("\n\n")[0])
    p.add_argument("run_tune", help="the refinery tune run directory (holds protocol.json)")
    p.add_argument("run_test", help="the refinery ablate run of its winners.yaml on the test split")
    p.add_argument("--out", default=None, help="write the markdown here (default: stdout)")
    p.add_argument("--baseline", default="masked/paper", metavar="ENTRY/SETTING",
                   help="the gains' reference: a tune entry label and 'paper' or 'tuned' (default masked/paper)")
    args = p.parse_args(argv)
    entry, _, setting = args.baseline.rpartition("/")
    if setting not in ("paper", "tuned") or not entry:
        print(f"{p.prog}: error: --baseline {args.baseline}: expected ENTRY/paper or ENTRY/tuned", file=sys.stderr)
        return 2
    return write_or_print(p.prog, lambda: protocol_markdown(args.run_tune, args.run_test, (entry, setting)), args.out)


if __name__ == "__main__":
    sys.exit(main())
