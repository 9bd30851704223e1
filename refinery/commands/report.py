"""``refinery report``: tables (markdown) and figures (PNG) over one or more ablation runs."""

from __future__ import annotations


def add_parser(sub) -> None:
    from refinery.helpformat import DefaultsFormatter

    p = sub.add_parser("report", help="write report.md with tables and figures for ablation run directories",
                       formatter_class=DefaultsFormatter,
                       description="Write report.md (accuracy with Wilson intervals, answer-only accuracy, paired "
                                   "gains over the baseline with an exact McNemar p-value, drafts fixed and broken "
                                   "by edit passes, accuracy by subset, NFE, tokens/s) and its figures (PNG) for "
                                   "one or more run directories of `refinery ablate`.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by `refinery ablate`")
    p.add_argument("--out", default=None, help="output directory (default: the first RUN_DIR)")
    p.add_argument("--baseline", default=None,
                   help="label of the baseline strategy entry for gains (default: the masked low_confidence entry)")
    p.set_defaults(run=run)


def run(args) -> int:
    from refinery.analysis.report import write_report

    try:
        path = write_report(args.runs, args.out or args.runs[0], baseline=args.baseline)
    except UnicodeDecodeError:
        raise not_utf8(args.runs) from None
    print(f"wrote {path}")
    return 0


def not_utf8(run_dirs) -> ValueError:
    """The error naming the run file that is not UTF-8 (the codec's own message names no file)."""
    from pathlib import Path

    from refinery.core.errors import UsageError, read_text

    for d in run_dirs:
        for name in ("rows.jsonl", "config.yaml"):
            path = Path(d) / name
            try:
                read_text(path)
            except UsageError as e:
                return e
            except OSError:
                continue
    return UsageError(f"{', '.join(map(str, run_dirs))}: a file of these runs is not UTF-8 text")
