"""``pycode``: small Python functions from a one-line spec, scored by hidden tests in the sandbox.

    Write a Python function count_above(nums) that returns how many numbers in nums are greater than 3.

    def count_above(nums):
        count = 0
        for x in nums:
            if x > 3:
                count += 1
        return count

Problems come from families (count / sum / filter / transform over a predicate, nested sums,
extremes, string counting, products, first index, word reversal) with a predicate or a
constant, a function name and an argument name as parameters. Each has several valid
solutions: accumulator and loop-variable names, ``+=`` or ``x = x + ...``, an explicit loop or
a comprehension or builtin. A decoder that commits many tokens at once mixes them (``count``
declared, ``total`` returned) and the hidden tests fail. The score is the tests' verdict
(strict and answer-only coincide for code).

``space: 2`` (the default stays 1) draws from larger pools (:data:`V2`): seven more families (any / all
over a predicate, last index, word count, sum of squares, spread, capping), a divisibility predicate,
constants up to 20, more argument, accumulator and loop names. Two problems are the same problem when
they ask for the same function: the same name and the same spec up to the argument's name (``identity``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
from typing import Optional, Sequence

from refinery.core.tasks.base import VERDICTS, Example, Score, register_task
from refinery.core.tasks.embedded import GeneratedTask, Problem
from refinery.core.tasks.pycode_families import POOLS, RENAMES, V1, V2, test_inputs  # noqa: F401 (re-exported)


def held_out_arg(family: str, names: Sequence[str], space: int = 1) -> str:
    """The argument name a family never uses in training (chosen by a hash): those problems go to dev
    (or stay in test), so dev measures a (family, argument) pair unseen in training, as test can."""
    salt = f"pycode|held-out|{family}" if space == 1 else f"pycode|v{space}|held-out|{family}"
    return names[int(hashlib.sha1(salt.encode()).hexdigest()[:8], 16) % len(names)]


def identity(entry_point: str, spec: str) -> tuple:
    """The same problem = the same function asked for: its name and its spec with ``{arg}`` left open."""
    return (entry_point, spec)


@functools.lru_cache(maxsize=None)
def space_1_identities(tries: int = 400) -> frozenset:
    """Every identity space 1 (default max_k) can draw: each family's own draw at every constant, from
    ``tries`` seeded generators (its widest choice is one letter of 12: all are found but with probability
    below 1e-14; the generators are seeded, so the set is the same every time)."""
    return frozenset(identity(*fam(random.Random(i), k, V1)[:2]) for fam in V1.families
                     for k in range(2, V1.max_k + 1) for i in range(tries))


@register_task("pycode")
class PyCodeTask(GeneratedTask):
    def __init__(self, max_k: Optional[int] = None, timeout: float = 5.0, rename_prob: float = 0.0, space: int = 1):
        if space not in POOLS:
            raise ValueError(f"pycode: space must be one of {sorted(POOLS)}, got {space!r}")
        max_k = POOLS[space].max_k if max_k is None else max_k
        if not 2 <= max_k <= 50:
            raise ValueError(f"pycode: max_k must lie in 2..50, got {max_k}")
        if not 0.0 <= rename_prob <= 1.0:
            raise ValueError(f"pycode: rename_prob must lie in 0..1, got {rename_prob}")
        self.max_k, self.timeout, self.rename_prob, self.space = max_k, timeout, rename_prob, space

    def draw(self, rng: random.Random) -> Problem:
        pools = POOLS[self.space]
        fam = rng.choice(pools.families)
        k = rng.randint(2, self.max_k)
        stem, spec, oracle, write, kind = fam(rng, k, pools)
        names = pools.args[kind]
        arg = rng.choice(names)
        family = fam.__name__.removeprefix("fam_")
        held_out = arg == held_out_arg(family, names, self.space)
        if self.rename_prob and rng.random() < self.rename_prob:  # training data only: argument names
            arg = rng.choice(RENAMES[kind])  # outside every split's pool, so the model learns to copy them
        fname = stem
        prompt = f"Write a Python function {fname}({arg}) that {spec.format(arg=arg)}."
        trng = random.Random(f"{fname}|{arg}|{spec}")
        tests = "\n".join(f"assert {fname}({inp!r}) == {oracle(inp)!r}" for inp in test_inputs(kind, trng, k))

        def solution(r: random.Random, canonical: bool = False) -> str:
            return write(random.Random(0) if canonical else r, fname, arg)

        old = self.space > 1 and identity(fname, spec) in space_1_identities()  # v1 knew this problem
        return Problem(key=f"{fname}|{arg}|{spec}", prompt=prompt, reference=solution(rng, canonical=True),
                       meta={"entry_point": fname, "tests": tests, "family": family, "arg": arg, "spec": spec},
                       solution=solution, held_out=held_out, old=old)

    def examples(self, split: str, n: Optional[int] = None, seed: int = 0) -> list[Example]:
        """As for every generated task, plus ``meta["subset"]``: whether the problem's (family, argument)
        pair occurs in the train split ("pair seen in training") or not ("pair unseen in training");
        ``refinery report`` breaks accuracy down by it."""
        seen = train_pairs(self.max_k, self.space)
        out = super().examples(split, n, seed)
        for e in out:
            e.meta["subset"] = "pair " + ("seen" if (e.meta["family"], e.meta["arg"]) in seen else "unseen") \
                + " in training"
        return out

    def program(self, example: Example, output: str) -> str:
        return f"{extract_code(output)}\n\n{example.meta['tests']}\n"

    def score(self, example: Example, output: str) -> Score:
        return self.score_many([(example, output)])[0]

    def score_many(self, pairs, workers: int = 1) -> list[Score]:
        """Verdicts in order; each distinct program runs once per process (``core.tasks.base.VERDICTS``)."""
        def run(keys: list) -> list:
            from refinery.core.sandbox import run_many
            results = run_many([k[1] for k in keys], workers=workers, timeout=self.timeout)
            return [(r.passed, None if r.passed else _why(r)) for r in results]

        verdicts = VERDICTS.lookup([(ex.id, self.program(ex, out), self.timeout) for ex, out in pairs], run)
        return [Score(correct=ok, answer_correct=ok, extracted=extract_code(out), error=why)
                for (ex, out), (ok, why) in zip(pairs, verdicts)]


@functools.lru_cache(maxsize=None)
def train_pairs(max_k: int, space: int = 1, n: int = 6_000) -> frozenset:
    """The (family, argument) pairs of ``n`` train-split problems, as training draws them (at the default
    max_k a pair's rarest problem is >= 1/400 of draws; in space 2 a pair is >= 1/119, so none is missed)."""
    stream = PyCodeTask(max_k=max_k, space=space)._stream("train", seed=0, unique=False)
    return frozenset((p.meta["family"], p.meta["arg"]) for p in itertools.islice(stream, n))


# A deliberate second rule, not core.tasks.benchmarks.extract_code: the embedded pycode answers were scored
# (shipped model cards, the main command's rows and their ``extracted`` field) with this one, and the two part
# on inputs the embedded model can produce (a first line after the fence that is code, several blocks, no
# fence with blank lines around). tests/core/test_tasks_embedded.py pins where they agree and where they differ.
def extract_code(output: str) -> str:
    """The first fenced block when there is one (an unterminated fence runs to the end), else all of it."""
    start = output.find("```")
    if start < 0:
        return output.strip("\n")
    body = output[start + 3:]
    body = body.split("\n", 1)[1] if "\n" in body else ""  # drop the language tag line
    end = body.find("```")
    return body if end < 0 else body[:end]


def _why(result) -> Optional[str]:
    last = (result.stderr.strip().splitlines() or [""])[-1]
    return f"{result.status}: {last}"[:200]
