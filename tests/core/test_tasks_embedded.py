"""The embedded tasks: determinism, disjoint splits, several valid solutions, strict scoring."""

from __future__ import annotations

import random

import pytest

from core.tasks import Example, get_task
from core.tasks.arith import ArithTask
from core.tasks.embedded import split_of
from core.tasks.pycode import extract_code


def _example(task, problem) -> Example:
    return Example(id="x", task=task.name, prompt=problem.prompt, reference=problem.reference, meta=problem.meta)


@pytest.mark.parametrize("name", ["arith", "pycode"])
def test_examples_are_deterministic_unique_and_in_their_split(name):
    task = get_task(name)
    a, b = task.examples("test", 40, seed=3), task.examples("test", 40, seed=3)
    assert [e.prompt for e in a] == [e.prompt for e in b]
    assert len({e.id for e in a}) == 40
    assert [e.prompt for e in task.examples("test", 40, seed=4)] != [e.prompt for e in a]
    assert all(split_of(name, e.meta["key"]) == "test" for e in a)


@pytest.mark.parametrize("name", ["arith", "pycode"])
def test_train_dev_and_test_problems_never_overlap(name):
    task = get_task(name)
    test_keys = {p.key for p in task.problems("test", 100, seed=0)}
    dev_keys = {p.key for p in task.problems("dev", 60, seed=0)}
    train_keys = {p.key for p in task.problems("train", 400, seed=0)}
    assert not test_keys & train_keys and not dev_keys & train_keys and not dev_keys & test_keys
    records = task.training_records("train", 300, seed=1, kind="sft")
    held_out = {p.prompt for p in task.problems("test", 100, seed=0)} | {p.prompt for p in task.problems("dev", 60, seed=0)}
    assert not {r["history"][0]["content"] for r in records} & held_out


def test_pycode_dev_holds_family_argument_pairs_that_training_never_shows():
    task = get_task("pycode")
    pair = lambda p: (p.meta["family"], p.key.split("|")[1])  # noqa: E731
    train = {pair(p) for p in task.problems("train", 300, seed=0)}
    dev = task.problems("dev", 150, seed=0)
    held = {pair(p) for p in dev if p.held_out}
    assert held and not held & train
    assert len({f for f, _ in held}) >= 8  # of the 10 families (a pair whose keys all hash to test has none)
    examples = task.examples("dev", 150, seed=0)  # the same problems, in order
    assert [e.prompt for e in examples] == [p.prompt for p in dev]
    assert all(e.meta["subset"] == "pair unseen in training" for p, e in zip(dev, examples) if p.held_out)
    assert {e.meta["subset"] for e in examples} == {"pair unseen in training", "pair seen in training"}
    # a held-out problem is test when its key hashes there: the test split ignores the flag
    for p in task.problems("test", 100, seed=0):
        assert split_of("pycode", p.key, held_out=True) == "test" == split_of("pycode", p.key)
    assert split_of("pycode", next(p.key for p in dev if not p.held_out), held_out=True) == "dev"
    assert any(split_of("pycode", p.key) == "train" for p in dev if p.held_out)


@pytest.mark.parametrize("name", ["arith", "pycode"])
def test_training_records_have_the_harness_formats(name):
    task = get_task(name)
    text = task.training_records("train", 5, seed=0, kind="text")
    sft = task.training_records("train", 5, seed=0, kind="sft")
    assert all(set(r) == {"text"} and isinstance(r["text"], str) for r in text)
    assert all(set(r) == {"history", "response"} and r["history"][0]["role"] == "user" for r in sft)
    assert task.training_records("train", 5, seed=0, kind="sft") == sft
    with pytest.raises(ValueError, match="kind"):
        task.training_records("train", 1, kind="chat")
    with pytest.raises(ValueError, match="split"):
        task.examples("validation", 1)


def test_arith_every_surface_form_is_correct_and_there_are_several():
    task, rng = get_task("arith"), random.Random(0)
    forms = set()
    for p in task.problems("train", 60, seed=0):
        ex = _example(task, p)
        for _ in range(6):
            out = p.solution(rng)
            forms.add(out)
            score = task.score(ex, out)
            assert score.correct and score.answer_correct, (out, score)
        assert task.score(ex, p.reference).extracted == str(p.meta["answer"])
    assert len(forms) > 60 * 2  # operand order, spacing and separators vary


def test_arith_strict_scoring_catches_inconsistent_steps_but_answer_only_does_not():
    task = ArithTask()
    ex = Example(id="x", task="arith", prompt="Tom has 19 pens. He buys 19 more. Then he gives away 4. How many?",
                 reference="19+19=38\n38-4=34\n#### 34", meta={"start": 19, "steps": [["+", 19], ["-", 4]],
                                                                 "answer": 34})
    assert task.score(ex, "19 + 19 = 38; 38 - 4 = 34\n#### 34").correct
    assert task.score(ex, "19+19=38\n38-4=34\n#### 34").correct
    wrong_step = task.score(ex, "19+19=31\n38-4=34\n#### 34")
    assert not wrong_step.correct and wrong_step.answer_correct and "wrong arithmetic" in wrong_step.error
    unchained = task.score(ex, "19+19=38\n30-4=26\n#### 34")
    assert not unchained.correct and "does not follow" in unchained.error
    assert not task.score(ex, "19+19=38\n38-4=34\n#### 35").answer_correct
    assert not task.score(ex, "19+19=38\n#### 34").correct  # a step missing
    assert not task.score(ex, "19+19=38 so 38-4=34\n#### 34").correct  # words in the working
    assert not task.score(ex, "19+19=38\n38-4=34").correct  # no final answer
    swapped = task.score(ex, "19+19=38\n4-38=34\n#### 34")
    assert not swapped.correct  # subtraction operands cannot be swapped


def test_arith_knobs_are_respected_and_checked():
    task = ArithTask(max_operand=9, min_steps=4, max_steps=4, max_value=30)
    for p in task.problems("test", 30, seed=0):
        assert len(p.meta["steps"]) == 4
        value = p.meta["start"]
        for op, n in p.meta["steps"]:
            assert 1 <= n <= 9
            value = value + n if op == "+" else value - n
            assert 0 <= value <= 30
    with pytest.raises(ValueError, match="max_operand"):
        ArithTask(max_operand=50, max_value=40)


def test_pycode_solutions_pass_and_vary_and_wrong_code_fails():
    task, rng = get_task("pycode"), random.Random(0)
    problems = task.problems("train", 30, seed=0)
    pairs, forms = [], set()
    for p in problems:
        for _ in range(3):
            out = p.solution(rng)
            forms.add(out)
            pairs.append((_example(task, p), out))
    scores = task.score_many(pairs, workers=2)
    assert all(s.correct and s.answer_correct for s in scores), [s.error for s in scores if not s.correct]
    assert len(forms) > 45
    ex = _example(task, problems[0])
    fn = ex.meta["entry_point"]
    bad = task.score_many([(ex, f"def {fn}(xs):\n    return None"), (ex, f"def {fn}(xs)\n    return 1"),
                           (ex, ""), (ex, "```python\n" + ex.reference.replace("return", "return 1 +", 1) + "\n```")],
                          workers=2)
    assert not any(s.correct for s in bad)
    assert "SyntaxError" in bad[1].error
    assert task.score(ex, "Here you go:\n```python\n" + ex.reference + "\n```\nDone.").correct


def test_pycode_renamed_training_problems_use_names_evaluation_never_does_and_still_pass():
    from core.tasks.pycode import RENAMES

    plain, renamed = get_task("pycode"), get_task("pycode", rename_prob=0.5)
    renames = {n for names in RENAMES.values() for n in names}
    problems = renamed.problems("train", 40, seed=2)
    moved = [p for p in problems if p.meta["arg"] in renames]
    assert 8 <= len(moved) <= 32 and all(f"({p.meta['arg']})" in p.prompt for p in moved)
    rng = random.Random(1)
    scores = renamed.score_many([(_example(renamed, p), p.solution(rng)) for p in moved], workers=2)
    assert all(s.correct for s in scores), [s.error for s in scores if not s.correct]
    for split in ("dev", "test"):  # evaluation problems never carry a renamed argument
        assert not {e.meta["arg"] for e in plain.examples(split, 60)} & renames
    with pytest.raises(ValueError, match="rename_prob"):
        get_task("pycode", rename_prob=1.5)


def test_extract_code_fences():
    assert extract_code("```python\ndef f():\n    return 1\n```\ntext") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n") == "x = 1\n"  # unterminated: everything after the fence
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1"
    assert extract_code("a\n```py\nb\n```\n```python\nc\n```") == "b\n"
