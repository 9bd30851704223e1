"""Scoring of the refinery_arith_dev lm-eval task: the embedded arith task's own scorer."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _task_and_examples():
    from refinery.core.tasks import get_task

    task = get_task("arith")
    return task, {e.id: e for e in task.examples("dev", None, 0)}


def process_results(doc: dict, results: list[str]) -> dict:
    """lm-eval hook: one document and its generated text -> {"acc": 1.0 or 0.0} (arith's strict `correct`)."""
    task, examples = _task_and_examples()
    return {"acc": float(task.score(examples[doc["id"]], results[0]).correct)}
