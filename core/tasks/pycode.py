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
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import random
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from core.tasks.base import Example, Score, register_task
from core.tasks.embedded import GeneratedTask, Problem

ARGS = ("xs", "nums", "values", "lst", "numbers")
ACCS = ("count", "total", "result", "acc", "n")
VARS = ("x", "v", "num", "item")
IND = "    "


@dataclass(frozen=True)
class Pred:
    short: str  # goes into function names
    text: str  # goes into the spec, after "numbers in xs that are" / "are"
    expr: str  # Python condition on the placeholder {x}
    test: Callable[[int], bool]


def predicates(k: int) -> list[Pred]:
    return [
        Pred("above", f"greater than {k}", f"{{x}} > {k}", lambda v: v > k),
        Pred("below", f"less than {k}", f"{{x}} < {k}", lambda v: v < k),
        Pred("at_least", f"at least {k}", f"{{x}} >= {k}", lambda v: v >= k),
        Pred("at_most", f"at most {k}", f"{{x}} <= {k}", lambda v: v <= k),
        Pred("even", "even", "{x} % 2 == 0", lambda v: v % 2 == 0),
        Pred("odd", "odd", "{x} % 2 == 1", lambda v: v % 2 == 1),
    ]


def _loop(fname: str, arg: str, init: str, body: Sequence[str], ret: str) -> str:
    lines = [f"def {fname}({arg}):", IND + init] if init else [f"def {fname}({arg}):"]
    return "\n".join(lines + [IND + b for b in body] + [IND + ret])


def _acc_update(r: random.Random, acc: str, op: str, term: str) -> str:
    return f"{acc} {op}= {term}" if r.random() < 0.5 else f"{acc} = {acc} {op} {term}"


def _filter_loop(fname: str, arg: str, acc: str, init: str, x: str, cond: str, action: str) -> str:
    """``acc = init``; for each ``x`` of ``arg`` meeting ``cond``, run ``action``; return ``acc``."""
    return _loop(fname, arg, f"{acc} = {init}", [f"for {x} in {arg}:", f"{IND}if {cond}:", f"{IND * 2}{action}"],
                 f"return {acc}")


def _counting(r: random.Random, fname: str, arg: str, acc: str, x: str, cond: str, one_liners: Sequence[str]) -> str:
    """A counting loop over ``arg`` (one time in three) or one of two equivalent one-line returns."""
    choice = r.randrange(3)
    if choice == 0:
        return _filter_loop(fname, arg, acc, "0", x, cond, _acc_update(r, acc, "+", "1"))
    return f"def {fname}({arg}):\n{IND}return {one_liners[choice - 1]}"


# Each family: (draw parameters) -> (name stem, spec, oracle, solution writer, input kind).
def fam_count(rng, k):
    p = rng.choice(predicates(k))

    def write(r, fname, arg):
        acc, x = r.choice(ACCS), r.choice(VARS)
        cond = p.expr.format(x=x)
        return _counting(r, fname, arg, acc, x, cond, (f"sum(1 for {x} in {arg} if {cond})",
                                                        f"len([{x} for {x} in {arg} if {cond}])"))

    return (f"count_{p.short}", f"returns how many numbers in {{arg}} are {p.text}",
            lambda xs: sum(1 for v in xs if p.test(v)), write, "ints")


def fam_sum(rng, k):
    p = rng.choice(predicates(k))

    def write(r, fname, arg):
        acc, x = r.choice(ACCS), r.choice(VARS)
        cond = p.expr.format(x=x)
        if r.random() < 0.6:
            return _filter_loop(fname, arg, acc, "0", x, cond, _acc_update(r, acc, "+", x))
        return f"def {fname}({arg}):\n{IND}return sum({x} for {x} in {arg} if {cond})"

    return (f"sum_{p.short}", f"returns the sum of the numbers in {{arg}} that are {p.text}",
            lambda xs: sum(v for v in xs if p.test(v)), write, "ints")


def fam_filter(rng, k):
    p = rng.choice(predicates(k))

    def write(r, fname, arg):
        acc, x = r.choice(("out", "result", "keep", "res")), r.choice(VARS)
        cond = p.expr.format(x=x)
        if r.random() < 0.5:
            return _filter_loop(fname, arg, acc, "[]", x, cond, f"{acc}.append({x})")
        return f"def {fname}({arg}):\n{IND}return [{x} for {x} in {arg} if {cond}]"

    return (f"keep_{p.short}", f"returns the numbers in {{arg}} that are {p.text}, in order",
            lambda xs: [v for v in xs if p.test(v)], write, "ints")


def fam_map(rng, k):
    op, word, apply = rng.choice((("*", "multiplied by", operator.mul), ("+", "increased by", operator.add),
                                  ("-", "decreased by", operator.sub)))

    def write(r, fname, arg):
        acc, x = r.choice(("out", "result", "res")), r.choice(VARS)
        if r.random() < 0.5:
            return _loop(fname, arg, f"{acc} = []", [f"for {x} in {arg}:", f"{IND}{acc}.append({x} {op} {k})"],
                         f"return {acc}")
        return f"def {fname}({arg}):\n{IND}return [{x} {op} {k} for {x} in {arg}]"

    stem = {"*": "scale", "+": "add", "-": "sub"}[op]
    return (f"{stem}_{k}", f"returns a new list with every number in {{arg}} {word} {k}",
            lambda xs: [apply(v, k) for v in xs], write, "ints")


def fam_nested(rng, k):
    def write(r, fname, arg):
        acc, x, row = r.choice(ACCS), r.choice(VARS), r.choice(("row", "r", "inner", "sub"))
        choice = r.randrange(3)
        if choice == 0:
            return _loop(fname, arg, f"{acc} = 0", [f"for {row} in {arg}:", f"{IND}for {x} in {row}:",
                                                    f"{IND * 2}{_acc_update(r, acc, '+', x)}"], f"return {acc}")
        if choice == 1:
            return f"def {fname}({arg}):\n{IND}return sum(sum({row}) for {row} in {arg})"
        return f"def {fname}({arg}):\n{IND}return sum({x} for {row} in {arg} for {x} in {row})"

    return ("sum_nested", "returns the sum of all numbers in {arg}, a list of lists",
            lambda rows: sum(sum(r) for r in rows), write, "nested")


def fam_extreme(rng, k):
    big = rng.random() < 0.5
    cmp, word, builtin = (">", "largest", "max") if big else ("<", "smallest", "min")

    def write(r, fname, arg):
        acc, x = r.choice(("best", "m", "result", "top")), r.choice(VARS)
        if r.random() < 0.5:
            return _loop(fname, arg, f"{acc} = {arg}[0]", [f"for {x} in {arg}:", f"{IND}if {x} {cmp} {acc}:",
                                                           f"{IND * 2}{acc} = {x}"], f"return {acc}")
        return f"def {fname}({arg}):\n{IND}return {builtin}({arg})"

    return (f"{builtin}_of", f"returns the {word} number in the non-empty list {{arg}}",
            max if big else min, write, "nonempty")


def fam_char(rng, k):
    c = rng.choice("abcdeilnorst")

    def write(r, fname, arg):
        acc, ch = r.choice(ACCS), r.choice(("ch", "c", "letter"))
        return _counting(r, fname, arg, acc, ch, f"{ch} == '{c}'", (f"{arg}.count('{c}')",
                                                                    f"sum(1 for {ch} in {arg} if {ch} == '{c}')"))

    return (f"count_{c}", f"returns how many times the letter '{c}' appears in the string {{arg}}",
            lambda s: s.count(c), write, "text")


def fam_product(rng, k):
    def write(r, fname, arg):
        acc, x = r.choice(("prod", "result", "acc", "p")), r.choice(VARS)
        return _loop(fname, arg, f"{acc} = 1", [f"for {x} in {arg}:", f"{IND}{_acc_update(r, acc, '*', x)}"],
                     f"return {acc}")

    def oracle(xs):
        out = 1
        for v in xs:
            out *= v
        return out

    return ("product", "returns the product of the numbers in {arg}", oracle, write, "small")


def fam_index(rng, k):
    def write(r, fname, arg):
        i, x = r.choice(("i", "j", "idx")), r.choice(VARS)
        if r.random() < 0.5:
            return _loop(fname, arg, "", [f"for {i}, {x} in enumerate({arg}):", f"{IND}if {x} == {k}:",
                                          f"{IND * 2}return {i}"], "return -1")
        return _loop(fname, arg, "", [f"for {i} in range(len({arg})):", f"{IND}if {arg}[{i}] == {k}:",
                                      f"{IND * 2}return {i}"], "return -1")

    return (f"find_{k}", f"returns the index of the first number in {{arg}} equal to {k}, or -1 if there is none",
            lambda xs: xs.index(k) if k in xs else -1, write, "ints")


def fam_words(rng, k):
    def write(r, fname, arg):
        w = r.choice(("words", "parts", "ws"))
        choice = r.randrange(3)
        if choice == 0:
            return f"def {fname}({arg}):\n{IND}return ' '.join({arg}.split()[::-1])"
        if choice == 1:
            return f"def {fname}({arg}):\n{IND}return ' '.join(reversed({arg}.split()))"
        return f"def {fname}({arg}):\n{IND}{w} = {arg}.split()\n{IND}{w}.reverse()\n{IND}return ' '.join({w})"

    return ("reverse_words", "returns the words of the string {arg} in reverse order, joined by single spaces",
            lambda s: " ".join(s.split()[::-1]), write, "text")


FAMILIES = (fam_count, fam_sum, fam_filter, fam_map, fam_nested, fam_extreme, fam_char, fam_product,
            fam_index, fam_words)
WORDS = ("red", "sun", "cat", "tree", "blue", "star", "dog", "rain", "sea", "road", "lion", "bird")


def test_inputs(kind: str, rng: random.Random, k: int) -> list:
    ints = lambda lo, hi, n: [rng.randint(lo, hi) for _ in range(n)]  # noqa: E731
    if kind == "nested":
        return [[ints(-5, 9, rng.randint(0, 4)) for _ in range(rng.randint(0, 4))] for _ in range(4)] + [[]]
    if kind == "text":
        out = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) for _ in range(4)]
        return out + ["a"]
    if kind == "nonempty":
        return [ints(-9, 20, rng.randint(1, 7)) for _ in range(4)] + [[rng.randint(-9, 9)]]
    if kind == "small":
        return [ints(-3, 5, rng.randint(0, 5)) for _ in range(4)] + [[]]
    cases = [ints(-3, 12, rng.randint(0, 8)) for _ in range(4)] + [[], [k, k, k + 1]]
    return cases


# Argument names that evaluation problems never use (``rename_prob`` draws training problems with them).
RENAMES = {"text": ("line", "sentence", "string", "t"), "nested": ("matrix", "table", "m", "groups")}
RENAMES.update(dict.fromkeys(("ints", "nonempty", "small"), ("a", "arr", "data", "items", "seq", "vals", "ys")))


def arg_names(kind: str) -> tuple[str, ...]:
    return ("s", "text", "word") if kind == "text" else ("rows", "grid", "lists") if kind == "nested" else ARGS


def held_out_arg(family: str, names: Sequence[str]) -> str:
    """The argument name a family never uses in training (chosen by a hash): those problems go to dev
    (or stay in test), so dev measures a (family, argument) pair unseen in training, as test can."""
    return names[int(hashlib.sha1(f"pycode|held-out|{family}".encode()).hexdigest()[:8], 16) % len(names)]


@register_task("pycode")
class PyCodeTask(GeneratedTask):
    def __init__(self, max_k: int = 9, timeout: float = 5.0, rename_prob: float = 0.0):
        if not 2 <= max_k <= 50:
            raise ValueError(f"pycode: max_k must lie in 2..50, got {max_k}")
        if not 0.0 <= rename_prob <= 1.0:
            raise ValueError(f"pycode: rename_prob must lie in 0..1, got {rename_prob}")
        self.max_k, self.timeout, self.rename_prob = max_k, timeout, rename_prob

    def draw(self, rng: random.Random) -> Problem:
        fam = rng.choice(FAMILIES)
        k = rng.randint(2, self.max_k)
        stem, spec, oracle, write, kind = fam(rng, k)
        names = arg_names(kind)
        arg = rng.choice(names)
        family = fam.__name__.removeprefix("fam_")
        held_out = arg == held_out_arg(family, names)
        if self.rename_prob and rng.random() < self.rename_prob:  # training data only: argument names
            arg = rng.choice(RENAMES[kind])  # outside every split's pool, so the model learns to copy them
        fname = stem
        prompt = f"Write a Python function {fname}({arg}) that {spec.format(arg=arg)}."
        trng = random.Random(f"{fname}|{arg}|{spec}")
        tests = "\n".join(f"assert {fname}({inp!r}) == {oracle(inp)!r}" for inp in test_inputs(kind, trng, k))

        def solution(r: random.Random, canonical: bool = False) -> str:
            return write(random.Random(0) if canonical else r, fname, arg)

        return Problem(key=f"{fname}|{arg}|{spec}", prompt=prompt, reference=solution(rng, canonical=True),
                       meta={"entry_point": fname, "tests": tests, "family": family, "arg": arg},
                       solution=solution, held_out=held_out)

    def examples(self, split: str, n: Optional[int] = None, seed: int = 0) -> list[Example]:
        """As for every generated task, plus ``meta["subset"]``: whether the problem's (family, argument)
        pair occurs in the train split ("pair seen in training") or not ("pair unseen in training");
        ``refinery report`` breaks accuracy down by it."""
        seen = train_pairs(self.max_k)
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
        from core.sandbox import run_many

        results = run_many([self.program(ex, out) for ex, out in pairs], workers=workers, timeout=self.timeout)
        return [Score(correct=r.passed, answer_correct=r.passed, extracted=extract_code(out),
                      error=None if r.passed else _why(r)) for (ex, out), r in zip(pairs, results)]


@functools.lru_cache(maxsize=None)
def train_pairs(max_k: int, n: int = 6_000) -> frozenset:
    """The (family, argument) pairs of ``n`` train-split problems, as training draws them (at the default
    max_k a pair's rarest problem is >= 1/400 of draws, so none is missed)."""
    stream = PyCodeTask(max_k=max_k)._stream("train", seed=0, unique=False)
    return frozenset((p.meta["family"], p.meta["arg"]) for p in itertools.islice(stream, n))


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
