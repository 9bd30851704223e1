"""``refinery``: the command line. Each subcommand lives in ``refinery/commands/<name>.py`` with
``add_parser(subparsers)`` and ``run(args) -> int``; heavy imports happen inside ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("decode", "strategies", "convert", "train", "ablate", "tune", "report", "app", "lm-eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refinery",
        description="Compare decoding and refinement strategies for masked diffusion language models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"refinery.commands.{name.replace('-', '_')}")  # lm-eval: lm_eval.py
        except ModuleNotFoundError as e:
            if e.name == f"refinery.commands.{name.replace('-', '_')}":
                continue  # subcommand not installed in this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "pass_through", False):  # only lm-eval hands its arguments on
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        # Bad input (core.errors.UsageError and the older ValueError/KeyError checks): one clear line.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        return _one_line_error(args.command, msg)
    except OSError as e:
        if e.filename is None:
            raise  # not about a path the user gave: a bug or an environment fault keeps its traceback
        # A user path that is a file where a directory is wanted, unwritable, ...: name it.
        return _one_line_error(args.command, f"{e.filename}: {e.strerror or e}")


def _one_line_error(command: str, msg: str) -> int:
    first = msg.strip().splitlines()[0] if msg.strip() else msg
    print(f"refinery {command}: error: {first}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
