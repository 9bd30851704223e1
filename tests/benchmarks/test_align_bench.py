"""Speed target: batched canonical edit scripts + labels at >= 2x rapidfuzz ``editops`` (>= 1.5x at length 64).

By default (``--benchmark-disable``) each case runs once and checks its results against rapidfuzz.
``pytest tests/benchmarks/test_align_bench.py --benchmark-enable`` times both sides per length
(groups ``len64`` ...); ``python tests/benchmarks/align_bench.py`` prints the speed-up table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numba
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import align_bench as AB  # noqa: E402

PAIRS = {64: 1024, 256: 256, 1024: 64}  # 2^16 tokens a batch: quick when run once


@pytest.fixture(scope="module")
def two_threads():
    before = numba.get_num_threads()
    AB.set_threads(2)
    yield
    numba.set_num_threads(before)


@pytest.fixture(scope="module", params=sorted(PAIRS))
def workload(request):
    return AB.make_workload(request.param, PAIRS[request.param])


def test_refinery_scripts_and_labels(benchmark, workload, two_threads):
    benchmark.group = f"len{workload.length}"
    out = benchmark(AB.ours, workload)
    AB.check(workload, out, AB.theirs(workload))


def test_rapidfuzz_editops(benchmark, workload):
    benchmark.group = f"len{workload.length}"
    ref = benchmark(AB.theirs, workload)
    assert len(ref) == PAIRS[workload.length]


def test_script_mode_prints_the_ratio_table(capsys, two_threads):
    rows = AB.main(["--lengths", "64", "--pairs", "32", "--repeats", "1"])
    assert rows[0]["length"] == 64 and rows[0]["ratio_best"] > 0
    assert "| 64 | 32 |" in capsys.readouterr().out
