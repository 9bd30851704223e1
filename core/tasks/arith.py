"""``arith``: GSM8K-like word problems with step-by-step working, scored strictly.

    Mia has 7 shells. She finds 5 more. Then she gives away 3. How many shells does Mia have now?
    7+5=12
    12-3=9
    #### 9

Several written solutions are valid for each problem: the operands of ``+`` in either order,
compact or spaced operators, and three step separators. A model that has learned the task
writes any of them; a decoder that commits many tokens in parallel mixes them and writes
steps such as ``19+19=31`` while still guessing the final answer. So the score is strict:
every step must be valid arithmetic that chains from the start quantity through each event in
order, and the answer after ``####`` must equal the last step and the truth. The answer-only
verdict (the number after ``####``) is reported beside it.

Knobs: ``max_operand`` (quantities in the text), ``min_steps`` / ``max_steps`` (events),
``max_value`` (no running total leaves 0..max_value), ``space`` (1: the original problem space; 2: more
names, items and events, operands up to 40, totals up to 99; defaults of the other knobs follow it).
Two problems are the same problem when they ask for the same arithmetic: the same start and the same
events in order (``identity``), whoever holds which items, however it is worded.
"""

from __future__ import annotations

import random
import re

from refinery.core.tasks.base import Score, register_task
from refinery.core.tasks.embedded import GeneratedTask, Problem

NAMES = ("Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eli", "Amy", "Ben", "Lily")
PRONOUN = {"Mia": "She", "Ava": "She", "Zoe": "She", "Ivy": "She", "Amy": "She", "Lily": "She"}
ITEMS = ("apples", "pens", "stamps", "cards", "coins", "shells", "books", "marbles", "stickers", "eggs")
GAINS = ("buys {n} more", "finds {n} more", "gets {n} from a friend", "wins {n} more", "picks {n} more")
LOSSES = ("gives away {n}", "loses {n}", "sells {n}", "uses {n}", "gives {n} to a friend")
THEN = ("", "Then ", "After that ", "Later ")
SEPARATORS = ("\n", "; ", ". ")
STEP = re.compile(r"(\d+)\s*([+-])\s*(\d+)\s*=\s*(\d+)")
FINAL = re.compile(r"####\s*(-?\d+)\s*$")

# Space 2 adds to every pool (space 1's draws stay bit for bit what they were).
NAMES_V2 = NAMES + ("Nina", "Omar", "Ruth", "Hugo", "Iris", "Jack", "Kate", "Noah", "Rosa", "Theo")
PRONOUN_V2 = dict(PRONOUN, **dict.fromkeys(("Nina", "Ruth", "Iris", "Kate", "Rosa"), "She"))
ITEMS_V2 = ITEMS + ("beads", "cups", "rocks", "tickets", "bottles", "candles", "keys", "plates", "seeds", "toys")
GAINS_V2 = GAINS + ("receives {n} more", "collects {n} more", "makes {n} more")
LOSSES_V2 = LOSSES + ("throws away {n}", "trades away {n}", "breaks {n}")
THEN_V2 = THEN + ("Next ", "Soon ")
SPACES = {1: dict(max_operand=20, min_steps=2, max_steps=3, max_value=40),  # knob defaults per space
          2: dict(max_operand=40, min_steps=2, max_steps=3, max_value=99)}
POOLS = {1: (NAMES, PRONOUN, ITEMS, GAINS, LOSSES, THEN), 2: (NAMES_V2, PRONOUN_V2, ITEMS_V2, GAINS_V2, LOSSES_V2,
                                                              THEN_V2)}


def identity(start: int, steps) -> tuple:
    """What makes two problems the same problem: the start and the (op, n) events, in order."""
    return (int(start), tuple((op, int(n)) for op, n in steps))


def in_space_1(start: int, steps) -> bool:
    """Whether space 1 (its default knobs) can draw a problem with this identity: the draw's own rules."""
    k = SPACES[1]
    if not (2 <= start <= k["max_operand"] and k["min_steps"] <= len(steps) <= k["max_steps"]):
        return False
    value = start
    for op, n in steps:
        if op == "+":  # a gain is drawn when forced (value < 2) or allowed (value + 1 <= max_value)
            ok = (value < 2 or value + 1 <= k["max_value"]) and 1 <= n <= min(k["max_operand"], k["max_value"] - value)
        else:  # a loss only when not forced to gain and allowed
            ok = value >= 2 and 1 <= n <= min(k["max_operand"], value)
        if not ok:
            return False
        value = value + n if op == "+" else value - n
    return True


def write_step(a: int, op: str, b: int, c: int, spaced: bool) -> str:
    return f"{a} {op} {b} = {c}" if spaced else f"{a}{op}{b}={c}"


@register_task("arith")
class ArithTask(GeneratedTask):
    def __init__(self, max_operand: int | None = None, min_steps: int | None = None, max_steps: int | None = None,
                 max_value: int | None = None, space: int = 1):
        if space not in SPACES:
            raise ValueError(f"arith: space must be one of {sorted(SPACES)}, got {space!r}")
        self.space = space
        given = dict(max_operand=max_operand, min_steps=min_steps, max_steps=max_steps, max_value=max_value)
        knobs = {k: SPACES[space][k] if v is None else v for k, v in given.items()}
        max_operand, min_steps, max_steps, max_value = (knobs[k] for k in ("max_operand", "min_steps", "max_steps",
                                                                             "max_value"))
        if not 2 <= max_operand <= max_value:
            raise ValueError(f"arith: max_operand must lie in 2..max_value, got {max_operand}")
        if not 1 <= min_steps <= max_steps <= 6:
            raise ValueError(f"arith: need 1 <= min_steps <= max_steps <= 6, got {min_steps}, {max_steps}")
        self.max_operand, self.min_steps, self.max_steps, self.max_value = max_operand, min_steps, max_steps, max_value

    def draw(self, rng: random.Random) -> Problem:
        names, pronouns, items, gains, losses, then = POOLS[self.space]
        name, item = rng.choice(names), rng.choice(items)
        start = rng.randint(2, self.max_operand)
        value, steps, phrases = start, [], []
        for _ in range(rng.randint(self.min_steps, self.max_steps)):
            gain = value < 2 or (value + 1 <= self.max_value and rng.random() < 0.5)
            n = rng.randint(1, min(self.max_operand, self.max_value - value if gain else value))
            value = value + n if gain else value - n
            steps.append(("+" if gain else "-", n))
            phrases.append(rng.choice(gains if gain else losses).format(n=n))
        pron = pronouns.get(name, "He")
        sentences = [f"{name} has {start} {item}."]
        for i, ph in enumerate(phrases):
            lead = rng.choice(then) if i else ""
            subject = pron if not lead else pron.lower()
            sentences.append(f"{lead}{subject} {ph}.")
        prompt = " ".join(sentences) + f" How many {item} does {name} have now?"
        meta = {"start": start, "steps": steps, "answer": value}

        def solution(r: random.Random, canonical: bool = False) -> str:
            spaced = False if canonical else r.random() < 0.5
            sep = "\n" if canonical else r.choice(SEPARATORS)
            cur, lines = start, []
            for op, n in steps:
                nxt = cur + n if op == "+" else cur - n
                a, b = (n, cur) if op == "+" and not canonical and r.random() < 0.5 else (cur, n)
                lines.append(write_step(a, op, b, nxt, spaced))
                cur = nxt
            return sep.join(lines) + f"\n#### {cur}"

        key = f"{name}|{item}|{start}|{steps}|{phrases}"
        return Problem(key=key, prompt=prompt, reference=solution(rng, canonical=True), meta=meta,
                       solution=solution, old=self.space > 1 and in_space_1(start, steps))

    def score(self, example, output: str) -> Score:
        meta = example.meta
        text = output.strip()
        final = FINAL.search(text)
        answer = int(final.group(1)) if final else None
        answer_ok = answer == meta["answer"]
        extracted = None if answer is None else str(answer)
        working = text[: final.start()] if final else text
        error = _check_working(working, meta["start"], [tuple(s) for s in meta["steps"]])
        if error is None and final is None:
            error = "no final answer after '####'"
        if error is None and not answer_ok:
            error = f"final answer {answer} != {meta['answer']}"
        return Score(correct=error is None, answer_correct=answer_ok, extracted=extracted, error=error)


def _check_working(working: str, start: int, steps: list[tuple[str, int]]) -> str | None:
    """None when ``working`` is exactly a valid chain of ``steps`` from ``start``; else why not."""
    found = list(STEP.finditer(working))
    residue = STEP.sub("", working)
    if residue.strip(" \n;.,"):
        return f"unexpected text in the working: {residue.strip()[:40]!r}"
    if len(found) != len(steps):
        return f"{len(found)} steps written, {len(steps)} needed"
    cur = start
    for i, (m, (op, n)) in enumerate(zip(found, steps), 1):
        a, o, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if c != (a + b if o == "+" else a - b):
            return f"step {i}: {m.group(0)!r} is wrong arithmetic"
        operands_ok = sorted((a, b)) == sorted((cur, n)) if o == "+" else (a, b) == (cur, n)
        if o != op or not operands_ok:
            return f"step {i}: {m.group(0)!r} does not follow from {cur} and the event {op}{n}"
        cur = c
    return None
