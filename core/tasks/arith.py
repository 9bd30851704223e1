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
``max_value`` (no running total leaves 0..max_value).
"""

from __future__ import annotations

import random
import re

from core.tasks.base import Score, register_task
from core.tasks.embedded import GeneratedTask, Problem

NAMES = ("Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eli", "Amy", "Ben", "Lily")
PRONOUN = {"Mia": "She", "Ava": "She", "Zoe": "She", "Ivy": "She", "Amy": "She", "Lily": "She"}
ITEMS = ("apples", "pens", "stamps", "cards", "coins", "shells", "books", "marbles", "stickers", "eggs")
GAINS = ("buys {n} more", "finds {n} more", "gets {n} from a friend", "wins {n} more", "picks {n} more")
LOSSES = ("gives away {n}", "loses {n}", "sells {n}", "uses {n}", "gives {n} to a friend")
THEN = ("", "Then ", "After that ", "Later ")
SEPARATORS = ("\n", "; ", ". ")
STEP = re.compile(r"(\d+)\s*([+-])\s*(\d+)\s*=\s*(\d+)")
FINAL = re.compile(r"####\s*(-?\d+)\s*$")


def write_step(a: int, op: str, b: int, c: int, spaced: bool) -> str:
    return f"{a} {op} {b} = {c}" if spaced else f"{a}{op}{b}={c}"


@register_task("arith")
class ArithTask(GeneratedTask):
    def __init__(self, max_operand: int = 20, min_steps: int = 2, max_steps: int = 3, max_value: int = 40):
        if not 2 <= max_operand <= max_value:
            raise ValueError(f"arith: max_operand must lie in 2..max_value, got {max_operand}")
        if not 1 <= min_steps <= max_steps <= 6:
            raise ValueError(f"arith: need 1 <= min_steps <= max_steps <= 6, got {min_steps}, {max_steps}")
        self.max_operand, self.min_steps, self.max_steps, self.max_value = max_operand, min_steps, max_steps, max_value

    def draw(self, rng: random.Random) -> Problem:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        start = rng.randint(2, self.max_operand)
        value, steps, phrases = start, [], []
        for _ in range(rng.randint(self.min_steps, self.max_steps)):
            gain = value < 2 or (value + 1 <= self.max_value and rng.random() < 0.5)
            n = rng.randint(1, min(self.max_operand, self.max_value - value if gain else value))
            value = value + n if gain else value - n
            steps.append(("+" if gain else "-", n))
            phrases.append(rng.choice(GAINS if gain else LOSSES).format(n=n))
        pron = PRONOUN.get(name, "He")
        sentences = [f"{name} has {start} {item}."]
        for i, ph in enumerate(phrases):
            lead = rng.choice(THEN) if i else ""
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
                       solution=solution)

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
