"""Per-program cost of the sandbox (core.sandbox) under each isolation layout this machine offers.

Every layout runs the same small passing program (a HumanEval-sized function and its assert);
runs alternate between layouts so machine noise hits all of them, and the table shows the median
and the best run in milliseconds (wall clock of ``run_program``: temp dirs, ``unshare``,
interpreter start, private root, program, clean-up), and the median CPU time (user + system) the
child processes used, which a busy machine disturbs much less than the wall clock.

    python -m tests.benchmarks.sandbox_overhead [--repeats 20]    (from the repository root)

Layouts: ``private root`` (mount + net + pid namespaces, the default where available), ``net+pid,
PRELOAD`` (the layout before the mount namespace: no private root, the stdlib modules in
core.sandbox.PRELOAD imported before dropping to nobody) and ``plain`` (no namespaces).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

from refinery.core import sandbox

PROGRAM = "import math\n\ndef f(x):\n    return math.gcd(x, 6)\n\nassert f(4) == 2\n"


def layouts() -> dict[str, sandbox._Isolation]:
    """The layouts to time: the probed default first, then the weaker ones."""
    root = os.geteuid() == 0
    best = sandbox._isolation()
    found = {"default (" + (" ".join(best.prefix) or "no namespaces") + ")": best}
    for iso in sandbox._candidates(root):
        if iso != best:
            found["net+pid" + (", PRELOAD" if iso.drop else "")] = iso
    found["plain (no namespaces)"] = sandbox._Isolation(drop=root)
    return found


def _children_cpu() -> float:
    """Seconds of CPU (user + system) used so far by reaped child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    kwargs = dict(timeout=5.0, memory_mb=512, max_procs=64, max_file_mb=16, max_output=65536, guard=True,
                  python=None)
    runs = layouts()
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats + 1):  # the first round warms the page cache and is dropped
        for name, iso in runs.items():
            start, used = time.perf_counter(), _children_cpu()
            result = sandbox._run(PROGRAM, iso, **kwargs)
            times[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((_children_cpu() - used) * 1000)
            if not result.passed:
                raise SystemExit(f"{name}: the program did not pass: {result}")
    print(f"{'layout':<60} {'median ms':>10} {'best ms':>8} {'CPU ms':>7}")
    for name, values in times.items():
        values = values[1:]
        print(f"{name:<60} {statistics.median(values):>10.0f} {min(values):>8.0f} "
              f"{statistics.median(cpu[name][1:]):>7.0f}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, {args.repeats} runs each")


if __name__ == "__main__":
    main()
