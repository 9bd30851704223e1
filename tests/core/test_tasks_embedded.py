"""The embedded tasks: determinism, disjoint splits, several valid solutions, strict scoring."""

from __future__ import annotations

import random

import pytest

from refinery.core.tasks import Example, get_task
from refinery.core.tasks.arith import ArithTask
from refinery.core.tasks.embedded import split_of
from refinery.core.tasks.pycode import extract_code


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
    held_out = ({p.prompt for p in task.problems("test", 100, seed=0)}
                | {p.prompt for p in task.problems("dev", 60, seed=0)})
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
    from refinery.core.tasks.pycode import RENAMES

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


# (answer, pycode's extraction, the benchmarks' extraction): the two rules are kept apart on purpose (see
# the comment above core.tasks.pycode.extract_code); a change to either that merges or moves them fails here.
EXTRACTIONS = [
    ("```python\ndef f():\n    return 1\n```\ntext", "def f():\n    return 1\n", "def f():\n    return 1\n"),
    ("```\nx = 1\n", "x = 1\n", "x = 1\n"),
    ("\ndef f():\n    return 1\n", "def f():\n    return 1", "\ndef f():\n    return 1\n"),  # no fence
    ("```def f():\n    return 1\n```", "    return 1\n", "def f():\n    return 1\n"),  # code on the fence line
    ("```text\nno\n```\n```python\nyes\n```", "no\n", "yes\n"),  # several blocks: first vs first python
]


@pytest.mark.parametrize("answer, pycode_code, benchmark_code", EXTRACTIONS,
                         ids=["fenced", "unterminated", "no fence", "code on the fence line", "several blocks"])
def test_pycode_and_benchmark_extract_code_differ_only_where_pinned(answer, pycode_code, benchmark_code):
    from refinery.core.tasks import benchmarks

    assert extract_code(answer) == pycode_code
    assert benchmarks.extract_code(answer) == benchmark_code


# ---- problem space 2 (a fresh, larger space; space 1 stays as it was) ---------------------------------------

# sha256 of space 1's first 60 train / dev / test examples (seed 3: ids, prompts, references, tests, subsets)
# and 20 sft records of each task, as generated before space 2 existed: results on space 1 stay reproducible.
SPACE_1_FINGERPRINT = {"arith": "e3503682f7a8b0e0f812ff3128c68156f472879fb1d1acce8b3088bfa8f90bd4",
                       "pycode": "658edc394492112fbffa4dbd51b3a0d0fcd124345cefc680cdaef4efd40f544c"}


@pytest.mark.parametrize("name", ["arith", "pycode"])
def test_space_1_is_unchanged(name):
    import hashlib
    import json

    for task in (get_task(name), get_task(name, space=1)):
        blob = [[e.id, e.prompt, e.reference, e.meta.get("tests", ""), e.meta.get("subset", "")]
                for split in ("train", "dev", "test") for e in task.examples(split, n=60, seed=3)]
        recs = task.training_records("train", 20, seed=1, kind="sft", references=3)
        digest = hashlib.sha256(json.dumps([blob, recs], sort_keys=True).encode()).hexdigest()
        assert digest == SPACE_1_FINGERPRINT[name]


@pytest.mark.parametrize("name, n", [("arith", 1000), ("pycode", 500)])
def test_space_2_test_split_is_large_and_disjoint_from_its_train_and_dev(name, n):
    task = get_task(name, space=2)
    test = task.problems("test", n, seed=0)  # raises when the split holds fewer distinct problems
    assert len({p.key for p in test}) == n
    dev = task.problems("dev", 200, seed=0)
    train = task.problems("train", 1000, seed=0)
    test_keys, dev_keys, train_keys = ({p.key for p in ps} for ps in (test, dev, train))
    assert not test_keys & train_keys and not dev_keys & train_keys and not dev_keys & test_keys
    assert all(task.split_for(p) == "test" and not p.old for p in test)
    assert any(p.old for p in train)  # space 1's problems may be trained on in space 2, never evaluated
    examples = task.examples("test", 20, seed=0)
    assert all(e.id.startswith(f"{name}-v2-") for e in examples)  # rows of the two spaces never share ids
    assert not {e.id for e in examples} & {e.id for e in get_task(name).examples("test", 20, seed=0)}


def _arith_identity(p):
    from refinery.core.tasks.arith import identity

    return identity(p.meta["start"], p.meta["steps"])


def test_no_space_2_test_or_dev_arith_problem_was_a_space_1_problem():
    """"The same problem": the same start and events in order (names, items and wording aside)."""
    from refinery.core.tasks.arith import in_space_1

    v1, v2 = get_task("arith"), get_task("arith", space=2)
    old = [p for split, n in (("train", 3000), ("dev", 600), ("test", 1000)) for p in v1.problems(split, n, seed=0)]
    assert all(in_space_1(p.meta["start"], p.meta["steps"]) for p in old)  # the predicate covers space 1
    assert not in_space_1(21, [("+", 1), ("-", 1)]) and not in_space_1(5, [("+", 36), ("-", 1)])
    assert not in_space_1(5, [("+", 1)]) and not in_space_1(1, [("+", 1), ("-", 1)])
    fresh = v2.problems("test", 1000, seed=0) + v2.problems("dev", 300, seed=0)
    assert not {_arith_identity(p) for p in fresh} & {_arith_identity(p) for p in old}
    assert not any(in_space_1(p.meta["start"], p.meta["steps"]) for p in fresh)


def test_no_space_2_test_or_dev_pycode_problem_was_a_space_1_problem():
    """"The same problem": the same function name and spec, whatever the argument is called."""
    from refinery.core.tasks.pycode import identity, space_1_identities

    v1, v2 = get_task("pycode"), get_task("pycode", space=2)
    ident = lambda p: identity(p.meta["entry_point"], p.meta["spec"])  # noqa: E731
    old = v1.problems("test", 135, seed=0) + v1.problems("dev", 187, seed=0) + v1.problems("train", 400, seed=0)
    known = space_1_identities()
    assert {ident(p) for p in old} <= known and len(known) == 151  # 10 families x their constants and choices
    fresh = v2.problems("test", 500, seed=0) + v2.problems("dev", 150, seed=0)
    assert not {ident(p) for p in fresh} & known
    families = {p.meta["family"] for p in fresh}
    # space 2's seven new families are all evaluated; space 1's families without a constant (and with no
    # new letters or predicates in space 2) ask for the same functions as before, so they are train-only
    assert {"any", "all", "last_index", "count_words", "squares", "spread", "cap"} <= families
    assert not families & {"nested", "product", "words", "extreme"} and len(families) == 13
    held = [p for p in v2.problems("dev", 150, seed=0) if p.held_out]
    train_pairs = {(p.meta["family"], p.meta["arg"]) for p in v2.problems("train", 600, seed=0)}
    assert held and not {(p.meta["family"], p.meta["arg"]) for p in held} & train_pairs


def _space_2_problems_by_family() -> dict:
    from refinery.core.tasks.pycode import V2

    task, rng, out = get_task("pycode", space=2), random.Random(5), {}
    while len(out) < len(V2.families):
        p = task.draw(rng)
        out.setdefault(p.meta["family"], p)
    return out


def test_every_space_2_pycode_family_passes_its_tests_and_a_perturbed_solution_fails():
    task, rng = get_task("pycode", space=2), random.Random(0)
    by_family = _space_2_problems_by_family()
    assert len(by_family) == 17
    pairs, bad = [], []
    for p in by_family.values():
        ex = _example(task, p)
        pairs += [(ex, p.reference)] + [(ex, p.solution(rng)) for _ in range(2)]
        lines = p.reference.splitlines()  # the last return wraps its value in a list: wrong on every input
        last = max(i for i, line in enumerate(lines) if line.strip().startswith("return "))
        indent, expr = lines[last].split("return ", 1)
        bad.append((ex, "\n".join(lines[:last] + [f"{indent}return [{expr}]"] + lines[last + 1:])))
    scores = task.score_many(pairs + bad, workers=2)
    good = scores[: len(pairs)]
    failed = [(ex.meta["family"], s.error) for (ex, _), s in zip(pairs, good) if not s.correct]
    assert not failed
    assert not any(s.correct for s in scores[len(pairs):])


def test_space_2_arith_solutions_score_and_knobs_follow_the_space():
    task, rng = get_task("arith", space=2), random.Random(0)
    problems = task.problems("test", 40, seed=0)
    assert max(p.meta["start"] for p in task.problems("test", 300, seed=0)) > 20  # a larger operand space
    for p in problems:
        ex = _example(task, p)
        assert all(task.score(ex, p.solution(rng)).correct for _ in range(3))
        assert not task.score(ex, p.reference.replace("####", "#### 1")).correct
    with pytest.raises(ValueError, match="space"):
        get_task("arith", space=3)
    with pytest.raises(ValueError, match="space"):
        get_task("pycode", space=0)


def test_prepare_emits_space_2_training_data(tmp_path):
    from refinery.experiments.embedded.prepare import _records

    v2_train = {p.prompt for p in get_task("pycode", space=2).problems("train", 1, seed=0)}
    recs = _records(("pycode", "train", 200, 0, "sft", 0, 0.0, 2))
    prompts = {r["history"][0]["content"] for r in recs}
    from refinery.core.tasks.pycode import V1

    v1_stems = {fam(random.Random(0), 3, V1)[0] for fam in V1.families}
    assert any(not any(f" {stem}(" in q for stem in v1_stems) for q in prompts)  # space 2's own families
    held = {p.prompt for split in ("dev", "test") for p in get_task("pycode", space=2).problems(split, 100, seed=0)}
    assert not prompts & held and v2_train
