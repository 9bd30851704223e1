"""The pycode verdict memo: each distinct (example, program) runs in the sandbox once per process."""

from __future__ import annotations

import pytest

import refinery.core.sandbox
from refinery.core.tasks import get_task
from refinery.core.tasks.base import VERDICTS, VerdictMemo


@pytest.fixture
def counted(monkeypatch):
    """Clears the memo and counts the programs the sandbox runs."""
    ran = []
    real = refinery.core.sandbox.run_many

    def run_many(programs, workers=2, **kw):
        ran.extend(programs)
        return real(programs, workers=workers, **kw)

    monkeypatch.setattr(refinery.core.sandbox, "run_many", run_many)
    VERDICTS.clear()
    yield ran
    VERDICTS.clear()


def _fence(code: str) -> str:
    return f"```python\n{code}\n```"


def test_memo_gives_the_fresh_verdict_and_runs_each_program_once(counted):
    task = get_task("pycode")
    a, b = task.examples("test", n=2)
    right = _fence(a.reference)
    wrong = _fence(a.reference.replace("return", "return 1 +", 1))
    pairs = [(a, right), (a, wrong), (a, right), (b, right), (a, "no code at all")]
    first = task.score_many(pairs, workers=2)
    assert len(counted) == 4  # the repeated (a, right) ran once
    assert [s.correct for s in first] == [True, False, True, False, False]
    assert first[1].error and first[3].error and first[0].error is None
    again = task.score_many(pairs, workers=2)
    assert again == first and len(counted) == 4  # all from the memo
    VERDICTS.clear()
    fresh = [task.score(ex, out) for ex, out in pairs]  # one by one, each run in the sandbox
    assert fresh == first and len(counted) == 8  # 4 distinct programs run again after clear()


def test_memo_is_keyed_by_the_example_not_only_the_code(counted):
    task = get_task("pycode")
    a, b = task.examples("test", n=2)
    out = _fence(a.reference)
    assert task.score(a, out).correct
    verdict_b = task.score(b, out)  # the same output for another problem: its own tests decide
    assert not verdict_b.correct and len(counted) == 2
    assert task.score(b, out) == verdict_b and len(counted) == 2


def test_memo_drops_the_oldest_past_its_capacity():
    memo = VerdictMemo(capacity=2)
    calls = []

    def run(keys):
        calls.extend(keys)
        return [(k == "ok", None) for k in keys]

    assert memo.lookup(["ok", "x", "ok"], run) == [(True, None), (False, None), (True, None)]
    assert calls == ["ok", "x"] and len(memo) == 2
    memo.lookup(["y"], run)  # "ok" is the oldest use: dropped
    assert "ok" not in memo and "x" in memo and "y" in memo
    memo.lookup(["ok"], run)
    assert calls == ["ok", "x", "y", "ok"]
