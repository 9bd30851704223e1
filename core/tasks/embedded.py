"""Shared machinery of the embedded (generated) tasks: seeded problems, disjoint splits, training data.

A generated task draws problems from a seeded ``random.Random``. Each problem has a *key* (the
parameters that define it, not its surface form); ``split_of(key)`` hashes the key into test (20%),
dev (10%) or train (70%), so no test or dev problem is ever a training problem, whatever the seeds,
and the split does not depend on the order of generation. A task may also mark a problem
``held_out`` (pycode: one argument name per function family): outside test, such problems all go to
dev, so dev holds combinations that training never shows, as test does by chance; the test split
is decided by the hash alone and does not move. Settings (budget splits, stop rules) are
chosen on dev; test is only for reporting. Every problem has several valid written
solutions (``Problem.solution(rng)``): that multimodality is what parallel decoding breaks.

Problem spaces are versioned (task option ``space``): ``space: 1`` is the original space, kept bit for bit
so old results reproduce; ``space: 2`` is larger, and its split hash is salted with the version, so its
splits are fresh. A v2 problem that is "the same problem" as one of space 1 (each task defines that by
its ``identity``: the computation asked for, whatever the names and wording) is marked ``old``: it may only
be trained on, so no v2 test or dev problem was ever a v1 problem of any split.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from refinery.core.tasks.base import Example, Task, check_split

TEST_PERCENT = 20  # share of problem keys that belong to the test split
DEV_PERCENT = 10  # share that belongs to the dev split (held out from training, for choosing settings)
DEFAULT_N = 500  # examples(split, n=None) returns this many (generated tasks have no natural size)
MAX_TRIES = 10_000  # draws per wanted problem before giving up (a knob setting that admits too few problems)


@dataclass(frozen=True)
class Problem:
    key: str  # the defining parameters; decides the split and the example id
    prompt: str
    reference: str  # the canonical solution
    meta: dict = field(compare=False)
    solution: Callable[[random.Random], str] = field(compare=False)  # one valid solution, any surface form
    held_out: bool = False  # never train: test when the key hashes there, else dev
    old: bool = False  # the same problem exists in an earlier space: train only (dropped when also held out)


def split_of(task: str, key: str, held_out: bool = False, space: int = 1) -> str:
    salt = f"{task}|{key}" if space == 1 else f"{task}|v{space}|{key}"  # v1's hash unchanged
    bucket = int(hashlib.sha1(salt.encode()).hexdigest()[:8], 16) % 100
    if bucket < TEST_PERCENT:
        return "test"
    return "dev" if held_out or bucket < TEST_PERCENT + DEV_PERCENT else "train"


class GeneratedTask(Task):
    """Base of ``arith`` and ``pycode``: subclasses implement ``draw(rng) -> Problem`` and ``score``."""

    space: int = 1  # problem-space version (subclasses set it from their ``space`` option)

    def draw(self, rng: random.Random) -> Problem:
        raise NotImplementedError

    @property
    def _tag(self) -> str:
        """'' for space 1 (its seeds and ids as they always were), else '|v2' ..."""
        return "" if self.space == 1 else f"|v{self.space}"

    def split_for(self, p: Problem) -> Optional[str]:
        """The split of a drawn problem; None: in no split (an old problem that is also held out)."""
        if p.old:
            return None if p.held_out else "train"
        return split_of(self.name, p.key, p.held_out, self.space)

    def _stream(self, split: str, seed: int, unique: bool) -> Iterator[Problem]:
        check_split(self.name, split)
        rng = random.Random(f"{self.name}|{split}|{seed}{self._tag}")
        seen: set[str] = set()
        misses = 0
        while True:
            p = self.draw(rng)
            if self.split_for(p) != split or (unique and p.key in seen):
                misses += 1
                if misses > MAX_TRIES:
                    raise ValueError(f"task {self.name!r}: cannot draw more {split} problems with these settings "
                                     f"({len(seen)} found)")
                continue
            misses = 0
            seen.add(p.key)
            yield p

    def problems(self, split: str, n: Optional[int] = None, seed: int = 0) -> list[Problem]:
        n = DEFAULT_N if n is None else n
        stream = self._stream(split, seed, unique=True)
        return [next(stream) for _ in range(n)]

    def examples(self, split: str, n: Optional[int] = None, seed: int = 0) -> list[Example]:
        prefix = self.name if self.space == 1 else f"{self.name}-v{self.space}"
        return [Example(id=f"{prefix}-{hashlib.sha1(p.key.encode()).hexdigest()[:12]}", task=self.name,
                        prompt=p.prompt, reference=p.reference, meta=dict(p.meta, key=p.key))
                for p in self.problems(split, n, seed)]

    def training_records(self, split: str, n: int, seed: int = 0, kind: str = "sft", references: int = 0) -> list[dict]:
        """``n`` records of fresh problems (repeats allowed), each with a random valid solution. With
        ``references`` > 0, "sft" records also list the other valid solutions found in that many draws
        (Stage 3 labels a draft against the nearest of them)."""
        if kind not in ("text", "sft"):
            raise ValueError(f"task {self.name!r}: kind must be 'text' or 'sft', got {kind!r}")
        stream = self._stream(split, seed, unique=False)
        rng = random.Random(f"{self.name}|{split}|{seed}|solutions{self._tag}")
        out = []
        for _ in range(n):
            p = next(stream)
            response = p.solution(rng)
            if kind == "text":
                out.append({"text": f"{p.prompt}\n{response}"})
            else:
                rec = {"history": [{"role": "user", "content": p.prompt}], "response": response}
                if references:
                    rec["references"] = sorted({p.solution(rng) for _ in range(references)} - {response})
                out.append(rec)
        return out


EMBEDDED_TASKS = ("arith", "pycode")


def embedded_corpus(n_per_task: int = 5000, seed: int = 0, space: int = 1) -> list[str]:
    """Prompt + solution texts of the train split of every embedded task (for the tokenizer)."""
    from refinery.core.tasks.base import get_task

    texts = []
    for name in EMBEDDED_TASKS:
        task = get_task(name, space=space)
        texts += [r["text"] for r in task.training_records("train", n_per_task, seed, kind="text")]
    return texts
