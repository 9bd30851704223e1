"""The task interface: examples with prompts and references, and a scorer.

    task = get_task("arith")
    examples = task.examples("test", n=100, seed=0)
    scores = task.score_many([(ex, output) for ex, output in zip(examples, outputs)], workers=2)

Every task, generated or loaded from files, answers the same four questions: which examples
(``examples``), what the model is shown (``Example.messages``), whether an output is right
(``score`` / ``score_many``) and, for the generated ones, what to train on
(``training_records``). ``Score.correct`` is the strict verdict the tables report first;
``Score.answer_correct`` is the looser answer-only verdict (equal to ``correct`` where the task
has no looser notion, e.g. code that must pass its tests).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from refinery.core.registry import Registry

SPLITS = ("train", "dev", "test")  # "dev": held out from training, for choosing settings (generated tasks)


@dataclass(frozen=True)
class Example:
    """One problem. ``prompt`` is the user turn; ``system`` an optional system turn."""

    id: str  # unique within (task, split)
    task: str  # registered task name
    prompt: str  # the user message
    reference: str  # a gold answer or solution, as text
    meta: dict = field(default_factory=dict, compare=False)  # task-specific: tests, entry point, values
    system: Optional[str] = None

    def messages(self) -> list[dict]:
        """Chat messages for ``core.tokenizer.render_prompt``."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class Score:
    """The verdict on one output."""

    correct: bool  # strict: the whole output is right (every step valid / every test passed)
    answer_correct: bool  # answer-only: the final answer is right, however it was reached
    extracted: Optional[str] = None  # the answer or code the scorer read out of the output
    error: Optional[str] = None  # why it failed, in one line (None when correct)


class Task:
    """Base class. Subclasses set ``name`` and implement ``examples`` and ``score``."""

    name: str = ""

    def examples(self, split: str, n: Optional[int] = None, seed: int = 0) -> list[Example]:
        """The first ``n`` examples of ``split`` (all when None) in a ``seed``-determined order."""
        raise NotImplementedError

    def score(self, example: Example, output: str) -> Score:
        raise NotImplementedError

    def score_many(self, pairs: Sequence[tuple[Example, str]], workers: int = 1) -> list[Score]:
        """Score (example, output) pairs, in order. Code tasks override this to run a sandbox pool."""
        return [self.score(ex, out) for ex, out in pairs]

    def training_records(self, split: str, n: int, seed: int = 0, kind: str = "sft") -> list[dict]:
        """Training data in the harness's JSONL formats: kind "text" -> {"text"}, "sft" -> {"history", "response"}."""
        raise NotImplementedError(f"task {self.name!r} generates no training data")


def check_split(task: str, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"task {task!r}: split must be one of {SPLITS}, got {split!r}")


TASKS: Registry[Task] = Registry("task", base=Task, populate="refinery.core.tasks")  # name -> Task subclass


def register_task(name: str):
    """Class decorator: ``@register_task("arith")``."""
    return TASKS.register(name)


def get_task(name: str, **kwargs: Any) -> Task:
    return TASKS.get(name)(**kwargs)


class VerdictMemo:
    """A code task's sandbox verdicts in this process: (example id, program, timeout) -> (passed, error line).

    Tuning trials and drafts write the same program for the same example many times and each sandbox run
    costs ~60 ms, so each distinct program runs once. The program holds the extracted code and the
    example's tests, so a key names both. A verdict is the first run's (a program that timed out once
    stays timed out); the oldest are dropped past ``capacity``. Thread-safe (the app scores from threads)."""

    def __init__(self, capacity: int = 200_000):
        self.capacity, self._d, self._lock = capacity, collections.OrderedDict(), threading.Lock()

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key) -> tuple[bool, Optional[str]]:
        """The stored verdict (KeyError when there is none)."""
        with self._lock:
            self._d.move_to_end(key)
            return self._d[key]

    def lookup(self, keys: Sequence[tuple], run: Callable[[list], list]) -> list:
        """The verdict of every key, in order; ``run(keys)`` -> verdicts computes the missing ones, each
        distinct key once."""
        todo = list(dict.fromkeys(k for k in keys if k not in self))
        fresh = dict(zip(todo, run(todo))) if todo else {}
        self.update(fresh)
        return [fresh[k] if k in fresh else self.get(k) for k in keys]

    def update(self, verdicts: dict) -> None:
        with self._lock:
            self._d.update(verdicts)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


VERDICTS = VerdictMemo()
