"""The ``pycode`` function families and the name pools they draw from (space 1's ten families, then the seven
that space 2 adds): each family draws one problem (function name, spec with ``{arg}`` open, reference
behaviour, a writer of valid solutions, the kind of test input) from a random generator, a constant ``k`` and
a :class:`Pools`. ``core.tasks.pycode`` turns them into the task (splits, held-out names, scoring)."""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

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


def _filter_names(r: random.Random, accs: Sequence[str], pools, p: Pred) -> tuple[str, str, str]:
    """(accumulator, loop variable, ``p``'s condition on it) for a loop over the numbers that pass ``p``; the
    accumulator is drawn first, then the variable (the problems' byte-for-byte fingerprint depends on the order)."""
    acc, x = r.choice(accs), r.choice(pools.vars)
    return acc, x, p.expr.format(x=x)


def _counting(r: random.Random, fname: str, arg: str, acc: str, x: str, cond: str, one_liners: Sequence[str]) -> str:
    """A counting loop over ``arg`` (one time in three) or one of two equivalent one-line returns."""
    choice = r.randrange(3)
    if choice == 0:
        return _filter_loop(fname, arg, acc, "0", x, cond, _acc_update(r, acc, "+", "1"))
    return f"def {fname}({arg}):\n{IND}return {one_liners[choice - 1]}"


@dataclass(frozen=True)
class Pools:
    """What a problem space draws from (names, constants' predicates, letters, families); see V1 / V2."""

    accs: tuple = ACCS
    vars: tuple = VARS
    preds: Callable[[int], list] = predicates
    chars: str = "abcdeilnorst"
    families: tuple = ()
    args: dict = field(default_factory=dict)  # input kind -> argument names
    max_k: int = 9  # constants 2..max_k (the task's max_k default)


# Each family: (draw parameters) -> (name stem, spec, oracle, solution writer, input kind).
def fam_count(rng, k, pools=None):
    pools = pools or V1
    p = rng.choice(pools.preds(k))

    def write(r, fname, arg):
        acc, x, cond = _filter_names(r, pools.accs, pools, p)
        return _counting(r, fname, arg, acc, x, cond, (f"sum(1 for {x} in {arg} if {cond})",
                                                        f"len([{x} for {x} in {arg} if {cond}])"))

    return (f"count_{p.short}", f"returns how many numbers in {{arg}} are {p.text}",
            lambda xs: sum(1 for v in xs if p.test(v)), write, "ints")


def fam_sum(rng, k, pools=None):
    pools = pools or V1
    p = rng.choice(pools.preds(k))

    def write(r, fname, arg):
        acc, x, cond = _filter_names(r, pools.accs, pools, p)
        if r.random() < 0.6:
            return _filter_loop(fname, arg, acc, "0", x, cond, _acc_update(r, acc, "+", x))
        return f"def {fname}({arg}):\n{IND}return sum({x} for {x} in {arg} if {cond})"

    return (f"sum_{p.short}", f"returns the sum of the numbers in {{arg}} that are {p.text}",
            lambda xs: sum(v for v in xs if p.test(v)), write, "ints")


def fam_filter(rng, k, pools=None):
    pools = pools or V1
    p = rng.choice(pools.preds(k))

    def write(r, fname, arg):
        acc, x, cond = _filter_names(r, ("out", "result", "keep", "res"), pools, p)
        if r.random() < 0.5:
            return _filter_loop(fname, arg, acc, "[]", x, cond, f"{acc}.append({x})")
        return f"def {fname}({arg}):\n{IND}return [{x} for {x} in {arg} if {cond}]"

    return (f"keep_{p.short}", f"returns the numbers in {{arg}} that are {p.text}, in order",
            lambda xs: [v for v in xs if p.test(v)], write, "ints")


def _elementwise(r: random.Random, fname: str, arg: str, pools, term) -> str:
    """A new list holding ``term(x)`` for every x of ``arg``: an appending loop or a comprehension."""
    acc, x = r.choice(("out", "result", "res")), r.choice(pools.vars)
    if r.random() < 0.5:
        return _loop(fname, arg, f"{acc} = []", [f"for {x} in {arg}:", f"{IND}{acc}.append({term(x)})"],
                     f"return {acc}")
    return f"def {fname}({arg}):\n{IND}return [{term(x)} for {x} in {arg}]"


def fam_map(rng, k, pools=None):
    pools = pools or V1
    op, word, apply = rng.choice((("*", "multiplied by", operator.mul), ("+", "increased by", operator.add),
                                  ("-", "decreased by", operator.sub)))

    def write(r, fname, arg):
        return _elementwise(r, fname, arg, pools, lambda x: f"{x} {op} {k}")

    stem = {"*": "scale", "+": "add", "-": "sub"}[op]
    return (f"{stem}_{k}", f"returns a new list with every number in {{arg}} {word} {k}",
            lambda xs: [apply(v, k) for v in xs], write, "ints")


def fam_nested(rng, k, pools=None):
    pools = pools or V1

    def write(r, fname, arg):
        acc, x, row = r.choice(pools.accs), r.choice(pools.vars), r.choice(("row", "r", "inner", "sub"))
        choice = r.randrange(3)
        if choice == 0:
            return _loop(fname, arg, f"{acc} = 0", [f"for {row} in {arg}:", f"{IND}for {x} in {row}:",
                                                    f"{IND * 2}{_acc_update(r, acc, '+', x)}"], f"return {acc}")
        if choice == 1:
            return f"def {fname}({arg}):\n{IND}return sum(sum({row}) for {row} in {arg})"
        return f"def {fname}({arg}):\n{IND}return sum({x} for {row} in {arg} for {x} in {row})"

    return ("sum_nested", "returns the sum of all numbers in {arg}, a list of lists",
            lambda rows: sum(sum(r) for r in rows), write, "nested")


def fam_extreme(rng, k, pools=None):
    pools = pools or V1
    big = rng.random() < 0.5
    cmp, word, builtin = (">", "largest", "max") if big else ("<", "smallest", "min")

    def write(r, fname, arg):
        acc, x = r.choice(("best", "m", "result", "top")), r.choice(pools.vars)
        if r.random() < 0.5:
            return _loop(fname, arg, f"{acc} = {arg}[0]", [f"for {x} in {arg}:", f"{IND}if {x} {cmp} {acc}:",
                                                           f"{IND * 2}{acc} = {x}"], f"return {acc}")
        return f"def {fname}({arg}):\n{IND}return {builtin}({arg})"

    return (f"{builtin}_of", f"returns the {word} number in the non-empty list {{arg}}",
            max if big else min, write, "nonempty")


def fam_char(rng, k, pools=None):
    pools = pools or V1
    c = rng.choice(pools.chars)

    def write(r, fname, arg):
        acc, ch = r.choice(pools.accs), r.choice(("ch", "c", "letter"))
        return _counting(r, fname, arg, acc, ch, f"{ch} == '{c}'", (f"{arg}.count('{c}')",
                                                                    f"sum(1 for {ch} in {arg} if {ch} == '{c}')"))

    return (f"count_{c}", f"returns how many times the letter '{c}' appears in the string {{arg}}",
            lambda s: s.count(c), write, "text")


def fam_product(rng, k, pools=None):
    pools = pools or V1

    def write(r, fname, arg):
        acc, x = r.choice(("prod", "result", "acc", "p")), r.choice(pools.vars)
        return _loop(fname, arg, f"{acc} = 1", [f"for {x} in {arg}:", f"{IND}{_acc_update(r, acc, '*', x)}"],
                     f"return {acc}")

    def oracle(xs):
        out = 1
        for v in xs:
            out *= v
        return out

    return ("product", "returns the product of the numbers in {arg}", oracle, write, "small")


def fam_index(rng, k, pools=None):
    pools = pools or V1

    def write(r, fname, arg):
        i, x = r.choice(("i", "j", "idx")), r.choice(pools.vars)
        if r.random() < 0.5:
            return _loop(fname, arg, "", [f"for {i}, {x} in enumerate({arg}):", f"{IND}if {x} == {k}:",
                                          f"{IND * 2}return {i}"], "return -1")
        return _loop(fname, arg, "", [f"for {i} in range(len({arg})):", f"{IND}if {arg}[{i}] == {k}:",
                                      f"{IND * 2}return {i}"], "return -1")

    return (f"find_{k}", f"returns the index of the first number in {{arg}} equal to {k}, or -1 if there is none",
            lambda xs: xs.index(k) if k in xs else -1, write, "ints")


def fam_words(rng, k, pools=None):
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


# ---- space 2: more families, a divisibility predicate, constants to 20, more names ---------------------------

def predicates_v2(k: int) -> list[Pred]:
    return predicates(k) + [Pred("div", f"divisible by {k}", f"{{x}} % {k} == 0", lambda v: v % k == 0)]


def _quantifier(rng, k, pools, every: bool):
    """any_* (some number passes the predicate) or all_* (every number does), as a loop or a builtin."""
    pools = pools or V2
    p = rng.choice(pools.preds(k))
    word = "all" if every else "any"

    def write(r, fname, arg):
        x = r.choice(pools.vars)
        cond = p.expr.format(x=x)
        if r.random() < 0.5:
            test, hit = (f"not ({cond})", "False") if every else (cond, "True")
            return _loop(fname, arg, "", [f"for {x} in {arg}:", f"{IND}if {test}:", f"{IND * 2}return {hit}"],
                         f"return {every}")
        return f"def {fname}({arg}):\n{IND}return {word}({cond} for {x} in {arg})"

    spec = f"returns True if {'every' if every else 'some'} number in {{arg}} is {p.text}, else False"
    test = all if every else any
    return (f"{word}_{p.short}", spec, lambda xs: test(p.test(v) for v in xs), write, "ints")


def fam_any(rng, k, pools=None):
    return _quantifier(rng, k, pools, every=False)


def fam_all(rng, k, pools=None):
    return _quantifier(rng, k, pools, every=True)


def fam_last_index(rng, k, pools=None):
    pools = pools or V2

    def write(r, fname, arg):
        i, x, res = r.choice(("i", "j", "idx")), r.choice(pools.vars), r.choice(("found", "last", "pos"))
        if r.random() < 0.5:
            return _loop(fname, arg, f"{res} = -1", [f"for {i}, {x} in enumerate({arg}):", f"{IND}if {x} == {k}:",
                                                     f"{IND * 2}{res} = {i}"], f"return {res}")
        return _loop(fname, arg, "", [f"for {i} in range(len({arg}) - 1, -1, -1):", f"{IND}if {arg}[{i}] == {k}:",
                                      f"{IND * 2}return {i}"], "return -1")

    return (f"find_last_{k}", f"returns the index of the last number in {{arg}} equal to {k}, or -1 if there is none",
            lambda xs: max((i for i, v in enumerate(xs) if v == k), default=-1), write, "ints")


def fam_count_words(rng, k, pools=None):
    pools = pools or V2

    def write(r, fname, arg):
        acc, w = r.choice(pools.accs), r.choice(("w", "word_", "part"))
        if r.random() < 0.5:
            return f"def {fname}({arg}):\n{IND}return len({arg}.split())"
        return _loop(fname, arg, f"{acc} = 0", [f"for {w} in {arg}.split():", f"{IND}{_acc_update(r, acc, '+', '1')}"],
                     f"return {acc}")

    return ("count_words", "returns how many words the string {arg} has", lambda s: len(s.split()), write, "text")


def fam_squares(rng, k, pools=None):
    pools = pools or V2

    def write(r, fname, arg):
        acc, x = r.choice(pools.accs), r.choice(pools.vars)
        if r.random() < 0.5:
            update = _acc_update(r, acc, "+", f"{x} * {x}")
            return _loop(fname, arg, f"{acc} = 0", [f"for {x} in {arg}:", f"{IND}{update}"], f"return {acc}")
        return f"def {fname}({arg}):\n{IND}return sum({x} * {x} for {x} in {arg})"

    return ("sum_squares", "returns the sum of the squares of the numbers in {arg}",
            lambda xs: sum(v * v for v in xs), write, "ints")


def fam_spread(rng, k, pools=None):
    def write(r, fname, arg):
        lo, hi = r.choice((("lo", "hi"), ("low", "high"), ("smallest", "largest")))
        body = f"return max({arg}) - min({arg})" if r.random() < 0.5 else \
            f"{lo} = min({arg})\n{IND}{hi} = max({arg})\n{IND}return {hi} - {lo}"
        return f"def {fname}({arg}):\n{IND}{body}"

    return ("spread", "returns the largest number minus the smallest number of the non-empty list {arg}",
            lambda xs: max(xs) - min(xs), write, "nonempty")


def fam_cap(rng, k, pools=None):
    pools = pools or V2

    def write(r, fname, arg):
        return _elementwise(r, fname, arg, pools, lambda x: f"min({x}, {k})")

    return (f"cap_{k}", f"returns a new list with every number in {{arg}} greater than {k} replaced by {k}",
            lambda xs: [min(v, k) for v in xs], write, "ints")


# Argument names that evaluation problems never use (``rename_prob`` draws training problems with them).
RENAMES = {"text": ("line", "sentence", "string", "t"), "nested": ("matrix", "table", "m", "groups")}
RENAMES.update(dict.fromkeys(("ints", "nonempty", "small"), ("a", "arr", "data", "items", "seq", "vals", "ys")))

_ARGS_V1 = {"text": ("s", "text", "word"), "nested": ("rows", "grid", "lists"),
            **dict.fromkeys(("ints", "nonempty", "small"), ARGS)}
_ARGS_V2 = {"text": ("s", "text", "word", "phrase", "msg"), "nested": ("rows", "grid", "lists", "blocks", "chunks"),
            **dict.fromkeys(("ints", "nonempty", "small"), ARGS + ("ns", "elems", "scores", "marks"))}
V1 = Pools(families=FAMILIES, args=_ARGS_V1)
V2 = Pools(accs=ACCS + ("tally", "answer", "agg"), vars=VARS + ("e", "val", "elem"), preds=predicates_v2,
           chars="abcdeghilmnoprstuw", families=FAMILIES + (fam_any, fam_all, fam_last_index, fam_count_words,
                                                            fam_squares, fam_spread, fam_cap),
           args=_ARGS_V2, max_k=20)
POOLS = {1: V1, 2: V2}
