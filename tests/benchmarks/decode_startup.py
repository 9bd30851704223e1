"""Wall and CPU time of one `refinery decode` call from a fresh process (the tour's command), best and
median of N runs, plus where the time goes (imports, model load, generation) from one profiled run.

    python tests/benchmarks/decode_startup.py [--runs 5] [-- extra decode arguments]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOUR = ["--task", "arith", "--example", "0", "--strategy", "edit", "--budget", "1/8", "--quiet"]


def one_call(cmd: list[str]) -> tuple[float, float]:
    """-> (wall seconds, CPU seconds of the child: user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--command", default=f"{sys.executable} -m refinery decode",
                    help="the decode command to time (split on spaces)")
    ap.add_argument("args", nargs="*", help="decode arguments (default: the tour's edit call)")
    a = ap.parse_args()
    cmd = a.command.split() + (a.args or TOUR)
    one_call(cmd)  # warm the file cache and the bytecode caches
    walls, cpus = zip(*(one_call(cmd) for _ in range(a.runs)))
    imp = subprocess.run([sys.executable, "-X", "importtime", "-c", "import core.checkpoint, core.model, "
                          "core.tokenizer, core.decode, strategies, core.tasks"], cwd=REPO, capture_output=True,
                         text=True).stderr
    top = sorted(((int(l.split("|")[1]), l.split("|")[2].strip()) for l in imp.splitlines()
                  if l.startswith("import time:") and l.split("|")[1].strip().isdigit()), reverse=True)
    print(f"{' '.join(cmd[len(a.command.split()):])}")
    print(f"wall s: best {min(walls):.2f}  median {statistics.median(walls):.2f}   "
          f"CPU s: best {min(cpus):.2f}  median {statistics.median(cpus):.2f}   ({a.runs} runs)")
    print("largest cumulative imports (s): " + ", ".join(f"{n} {us / 1e6:.2f}" for us, n in top[:6]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
