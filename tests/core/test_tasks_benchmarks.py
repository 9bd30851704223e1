"""The real benchmarks (gsm8k, math500, humaneval, mbpp): loading, prompts and scoring.

The data-driven checks read the unmodified benchmark files from ``../shared/data`` (relative to
the repository root) and are skipped when that folder is absent. Nothing is downloaded.

Measured on the shipped files (2-core box, workers=2):
- HumanEval: 164/164 canonical solutions pass (prompt + canonical_solution + check(entry_point)).
- MBPP test split (task_id 11-510): 500/500 reference solutions pass; none fail, so the
  expected failure set is empty.
- GSM8K test: 1319/1319 gold answers are judged correct when fed back (as the full solution
  ending in ``#### n`` and as ``\\boxed{n}``); 0/1319 gold+1 answers are judged correct.
- MATH-500: 500/500 reference answers are equal to themselves re-rendered as ``\\boxed{answer}``
  according to math-verify alone (so the list of failures below is empty: math-verify 0.9 parses
  every MATH-500 answer form, intervals, tuples, ``\\text{(C)}``, degrees, ``\\pi`` included), and
  the scorer, which also accepts identical text, judges all 500 correct; 0 of the 311 integer
  answers is judged equal to answer+1.
"""

from __future__ import annotations

import gzip
import inspect
import json
import re
import sys
import threading
import types
from pathlib import Path

import pytest

import refinery.core.tasks.benchmarks  # noqa: F401  (registers the four tasks)
from refinery.core.errors import UsageError
from refinery.core.tasks.base import TASKS, Example, get_task
from refinery.core.tasks.benchmarks import (
    CODE_SYSTEM, MATH_SYSTEM, extract_code, last_boxed, last_number, verified_equal,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not found at {DATA} (../shared/data)")
WORKERS = 2

# MATH-500 answers math-verify does not judge equal to themselves (id -> why). Empty with
# math-verify 0.9.0: see the module docstring. Kept so a regression names the answers at once.
MATH500_SELF_MISMATCHES: dict[str, str] = {}
# MBPP test-split reference solutions that genuinely fail their own tests (id -> why): none.
MBPP_REFERENCE_FAILURES: dict[str, str] = {}


@pytest.fixture(scope="module")
def tasks():
    return {name: get_task(name, data_dir=str(DATA)) for name in ("gsm8k", "math500", "humaneval", "mbpp")}


# ------------------------------------------------------------------ the must-show checks

@needs_data
def test_humaneval_canonical_solutions_pass(tasks):
    he = tasks["humaneval"]
    examples = he.examples("test")
    assert len(examples) == 164 and {e.id for e in examples} == {f"HumanEval/{i}" for i in range(164)}
    for e in examples:  # the program is literally prompt + canonical_solution + test + check()
        assert he.program(e, e.reference[len(e.meta["prompt"]):]).startswith(e.reference)
    bodies = [(e, e.reference[len(e.meta["prompt"]):]) for e in examples]  # the model wrote only the body
    scores = he.score_many(bodies, workers=WORKERS)
    failed = {e.id: s.error for e, s in zip(examples, scores) if not s.correct}
    assert not failed, failed
    assert all(s.answer_correct and s.error is None for s in scores)


@needs_data
def test_humaneval_full_function_in_a_fence_passes(tasks):
    he = tasks["humaneval"]
    sample = he.examples("test", n=16, seed=3)
    outputs = [f"Here it is:\n```python\n{e.reference}```\nThis works because ..." for e in sample]
    scores = he.score_many(list(zip(sample, outputs)), workers=WORKERS)
    assert [s.correct for s in scores] == [True] * len(sample), [s.error for s in scores]
    assert scores[0].extracted == sample[0].reference


@needs_data
def test_mbpp_reference_solutions_pass_on_test_split(tasks):
    mbpp = tasks["mbpp"]
    examples = mbpp.examples("test")
    assert len(examples) == 500 and {int(e.id) for e in examples} == set(range(11, 511))
    scores = mbpp.score_many([(e, e.reference) for e in examples], workers=WORKERS)
    failed = {e.id: s.error for e, s in zip(examples, scores) if not s.correct}
    assert set(failed) == set(MBPP_REFERENCE_FAILURES), failed


@needs_data
def test_gsm8k_gold_answers_are_correct_and_gold_plus_one_is_not(tasks):
    gsm = tasks["gsm8k"]
    examples = gsm.examples("test")
    assert len(examples) == 1319
    wrong = []
    for e in examples:
        gold = int(e.reference)
        for output in (e.meta["solution"], f"Adding it up gives \\boxed{{{gold}}}.", f"so\n#### {gold}"):
            s = gsm.score(e, output)
            if not (s.correct and s.answer_correct and s.extracted == e.reference and s.error is None):
                wrong.append((e.id, output[-40:], s))
        for output in (f"#### {gold + 1}", f"\\boxed{{{gold + 1}}}", f"The answer is {gold + 1}."):
            s = gsm.score(e, output)
            if s.correct or s.answer_correct or s.error is None:
                wrong.append((e.id, output, s))
    assert not wrong, wrong[:5]


@needs_data
def test_math500_reference_answers_equal_themselves(tasks):
    m = tasks["math500"]
    examples = m.examples("test")
    assert len(examples) == 500
    mismatches = [e.id for e in examples if not verified_equal(e.reference, e.reference)]
    assert len(mismatches) <= 5, mismatches
    assert set(mismatches) == set(MATH500_SELF_MISMATCHES), mismatches
    for e in examples:
        s = m.score(e, f"Therefore the answer is $\\boxed{{{e.reference}}}$.")
        assert s.correct and s.answer_correct and s.extracted == e.reference.strip(), (e.id, e.reference, s)


@needs_data
def test_math500_perturbed_answers_are_wrong(tasks):
    m = tasks["math500"]
    integers = [e for e in m.examples("test") if re.fullmatch(r"-?\d+", e.reference)]
    assert len(integers) > 250
    judged_right = [e.id for e in integers if m.score(e, f"\\boxed{{{int(e.reference) + 1}}}").correct]
    assert not judged_right
    ex = Example("x", "math500", "p", "\\frac{1}{2}")
    for wrong in ("\\frac{1}{3}", "2", "-\\frac12", "x"):
        assert not m.score(ex, f"\\boxed{{{wrong}}}").correct, wrong
    for right in ("0.5", "\\dfrac12", "\\frac{2}{4}", "1/2"):
        assert m.score(ex, f"\\boxed{{{right}}}").correct, right


@needs_data
def test_wrong_code_scores_zero(tasks):
    he, mbpp = tasks["humaneval"], tasks["mbpp"]
    h = next(e for e in he.examples("test") if e.id == "HumanEval/0")
    m = next(e for e in mbpp.examples("test") if e.id == "11")
    entry = h.meta["entry_point"]
    name = re.match(r"assert\s+(\w+)", m.meta["test_list"][0]).group(1)
    pairs = [
        (h, f"```python\ndef {entry}(numbers, threshold)\n    return True\n```"),  # syntax error
        (h, f"```python\ndef {entry}(numbers, threshold):\n    return False\n```"),  # wrong value
        (h, ""),
        (h, "I cannot solve this."),
        (m, f"```python\ndef {name}(s, ch):\n    return s\n```"),
        (m, f"```python\ndef {name}(s, ch:\n    return s\n```"),
        (m, "   \n"),
        (m, "```python\n```"),
    ]
    scores = he.score_many(pairs[:4], workers=WORKERS) + mbpp.score_many(pairs[4:], workers=WORKERS)
    assert [s.correct or s.answer_correct for s in scores] == [False] * len(pairs)
    assert all(s.error and "\n" not in s.error for s in scores)
    assert scores[0].error.startswith("failed") and "SyntaxError" in scores[0].error
    assert "AssertionError" in scores[1].error and "empty output" in scores[2].error
    assert "empty output" in scores[6].error and "empty output" in scores[7].error
    assert scores[0].extracted == pairs[0][1].split("\n", 1)[1].rsplit("```", 1)[0]


@needs_data
def test_code_timeout_and_single_score(tasks):
    fast = get_task("humaneval", data_dir=str(DATA), timeout=1.5)
    h = fast.examples("test", n=1)[0]
    s = fast.score(h, f"```python\ndef {h.meta['entry_point']}(*a):\n    while True:\n        pass\n```")
    assert not s.correct and s.error.startswith("timeout")
    assert fast.score(h, h.reference) == fast.score_many([(h, h.reference)])[0]
    assert fast.score(h, h.reference).correct


# ------------------------------------------------------------------ extraction units

def test_fence_extraction():
    plain = "def f(x):\n    return x\n"
    assert extract_code(plain) == plain  # no fence: the whole text
    assert extract_code(f"Sure!\n```python\n{plain}```\nDone.") == plain
    assert extract_code(f"```py\n{plain}```") == plain
    assert extract_code(f"```\n{plain}```") == plain  # no language
    assert extract_code(f"```Python3 \n{plain}```") == plain
    assert extract_code(f"Here:\n```python\n{plain}") == plain  # unterminated: all after the fence
    assert extract_code("```python\n") == ""
    two = f"```python\n{plain}```\nand a usage example:\n```python\nprint(f(1))\n```"
    assert extract_code(two) == plain  # several blocks: the first
    other = f"Install:\n```bash\npip install x\n```\n```python\n{plain}```"
    assert extract_code(other) == plain  # a python block wins over an earlier non-python one
    assert extract_code("```text\nonly prose\n```") == "only prose\n"  # no python block: first block
    assert extract_code(f"```python\n{plain}```\n```python\nunterminated") == plain
    assert extract_code("```def g(): return 1\n```") == "def g(): return 1\n"  # not a tag: kept as code
    assert extract_code("```python\n    return x + 1```") == "    return x + 1"  # no character lost
    assert extract_code(f"```python\r\n{plain}```") in (plain, "\r\n" + plain)


def test_boxed_and_number_extraction():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\left\\{ 1, 2 \\right\\}}") == "\\left\\{ 1, 2 \\right\\}"
    assert last_boxed("\\boxed{x^{2}} and \\boxed{3") == "x^{2}"  # truncated last box skipped
    assert last_boxed("\\fbox{7}") == "7" and last_boxed("\\boxed {8}") == "8"
    assert last_boxed("no box here") is None and last_boxed("\\boxed{") is None
    assert last_number("It costs $1,234.50, not 3.") == "3"
    assert last_number("total: -1,234.5") == "-1234.5" and last_number("none") is None


def test_math_scores_carry_extraction_and_reason():
    gsm = TASKS["gsm8k"](data_dir="unused")
    ex = Example("0", "gsm8k", "q", "1000")
    s = gsm.score(ex, "First 3 + 4 = 7.\n#### 1,000\nGood luck with 2 more.")
    assert s.correct and s.extracted == "1000"
    assert gsm.score(ex, "\\boxed{1,000}").correct and gsm.score(ex, "\\boxed{\\$1000}").correct
    assert gsm.score(ex, "the total is 1000 dollars").correct  # last-number fallback
    s = gsm.score(ex, "I have no idea.")
    assert not s.correct and s.extracted is None and "no number" in s.error
    s = gsm.score(ex, "\\boxed{999}")
    assert not s.correct and s.extracted == "999" and "999" in s.error and "\n" not in s.error
    m = TASKS["math500"](data_dir="unused")
    s = m.score(Example("0", "math500", "q", "\\frac{14}{3}"), "The answer is 14/3.")
    assert not s.correct and s.extracted is None and "boxed" in s.error  # maths needs the box


def test_math_scoring_works_off_the_main_thread():
    m = TASKS["math500"](data_dir="unused")
    ex = Example("0", "math500", "q", "\\frac{\\sqrt{3}}{2}")
    got = []
    thread = threading.Thread(target=lambda: got.append(m.score(ex, "\\boxed{\\frac{\\sqrt3}{2}}")))
    thread.start()
    thread.join()
    assert got and got[0].correct


# ------------------------------------------------------------------ examples, prompts, splits

@needs_data
def test_examples_are_seeded_truncated_and_unique(tasks):
    for name, task in tasks.items():
        full = task.examples("test")
        assert len({e.id for e in full}) == len(full) and all(e.task == name for e in full)
        assert task.examples("test", seed=0) == full and task.examples("test", n=5, seed=0) == full[:5]
        assert task.examples("test", seed=1) != full and sorted(e.id for e in task.examples("test", seed=1)) == \
            sorted(e.id for e in full)
        assert task.examples("test", n=0) == [] and len(task.examples("test", n=10 ** 6)) == len(full)
    assert len(tasks["gsm8k"].examples("train")) == 7473
    assert {int(e.id) for e in tasks["mbpp"].examples("train")} == set(range(601, 975))
    sanitized = get_task("mbpp", data_dir=str(DATA), sanitized=True)
    assert (len(sanitized.examples("train")), len(sanitized.examples("test"))) == (120, 257)


@needs_data
def test_bad_splits(tasks):
    for name in ("math500", "humaneval"):
        with pytest.raises(ValueError, match="no 'train' split"):
            tasks[name].examples("train")
    with pytest.raises(ValueError, match="no 'dev' split"):
        tasks["gsm8k"].examples("dev")
    with pytest.raises(ValueError, match="split must be one of"):
        tasks["gsm8k"].examples("validation")
    with pytest.raises(ValueError, match="n must be"):
        tasks["gsm8k"].examples("test", n=-1)


@needs_data
def test_prompts_and_system_override(tasks):
    g = tasks["gsm8k"].examples("test", n=1)[0]
    assert g.messages()[0] == {"role": "system", "content": MATH_SYSTEM} and "\\boxed{}" in MATH_SYSTEM
    assert g.messages()[1]["content"] == g.prompt and g.meta["solution"].endswith(f"#### {g.reference}")
    h = tasks["humaneval"].examples("test", n=1)[0]
    assert h.system == CODE_SYSTEM and "```python" in CODE_SYSTEM
    assert h.meta["prompt"].strip() in h.prompt and "```python\n" in h.prompt
    m = tasks["mbpp"].examples("test", n=1)[0]
    assert m.meta["test_list"][0].strip() in m.prompt
    custom = get_task("math500", data_dir=str(DATA), system_prompt="Answer in \\boxed{}.").examples("test", n=1)[0]
    assert custom.system == "Answer in \\boxed{}."
    bare = get_task("mbpp", data_dir=str(DATA), system_prompt="").examples("test", n=1)[0]
    assert bare.messages() == [{"role": "user", "content": bare.prompt}]


@needs_data
def test_data_dir_may_be_the_benchmark_folder_itself():
    assert len(get_task("gsm8k", data_dir=str(DATA / "gsm8k")).examples("test")) == 1319
    assert len(get_task("humaneval", data_dir=str(DATA / "humaneval")).examples("test")) == 164


def test_constructors_take_explicit_keywords():
    for name in ("gsm8k", "math500", "humaneval", "mbpp"):
        params = inspect.signature(TASKS[name].__init__).parameters
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
        assert {"data_dir", "system_prompt"} <= set(params)
    assert "timeout" in inspect.signature(TASKS["humaneval"].__init__).parameters
    assert "sanitized" in inspect.signature(TASKS["mbpp"].__init__).parameters
    with pytest.raises(ValueError, match="timeout"):
        get_task("mbpp", timeout=0)


# ------------------------------------------------------------------ bad data

def test_missing_data_dir_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        get_task("gsm8k", data_dir=str(tmp_path / "nope")).examples("test")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "humaneval" / "HumanEval.jsonl.gz"))):
        get_task("humaneval", data_dir=str(tmp_path)).examples("test")


def test_corrupt_line_and_missing_field_name_the_file(tmp_path):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    good = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
    (folder / "test.jsonl").write_text(f"{good}\n{{not json\n")
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'test.jsonl'}:2: not valid JSON")):
        get_task("gsm8k", data_dir=str(tmp_path)).examples("test")
    (folder / "test.jsonl").write_text(f"{good}\n\n{json.dumps({'question': 'x'})}\n")
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'test.jsonl'}:3: missing field 'answer'")):
        get_task("gsm8k", data_dir=str(tmp_path)).examples("test")
    (folder / "test.jsonl").write_text(json.dumps({"question": "x", "answer": "no final answer"}) + "\n")
    with pytest.raises(ValueError, match="test.jsonl:1: .*####"):
        get_task("gsm8k", data_dir=str(tmp_path)).examples("test")
    (folder / "test.jsonl").write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="test.jsonl:1: expected a JSON object"):
        get_task("gsm8k", data_dir=str(tmp_path)).examples("test")


def test_corrupt_gzip_and_bad_mbpp_fields_name_the_file(tmp_path):
    (tmp_path / "humaneval").mkdir()
    (tmp_path / "humaneval" / "HumanEval.jsonl.gz").write_bytes(b"\x1f\x8b\x08not really gzip")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "humaneval" / "HumanEval.jsonl.gz"))):
        get_task("humaneval", data_dir=str(tmp_path)).examples("test")
    with gzip.open(tmp_path / "humaneval" / "HumanEval.jsonl.gz", "wt") as f:
        f.write(json.dumps({"task_id": "HumanEval/0", "prompt": "def f():\n", "test": "", "entry_point": "f"}) + "\n")
    with pytest.raises(ValueError, match="HumanEval.jsonl.gz:1: missing field 'canonical_solution'"):
        get_task("humaneval", data_dir=str(tmp_path)).examples("test")
    (tmp_path / "mbpp").mkdir()
    row = {"task_id": 11, "text": "t", "code": "pass", "test_list": "assert True", "test_setup_code": ""}
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="mbpp.jsonl:1: field 'test_list' should be list"):
        get_task("mbpp", data_dir=str(tmp_path)).examples("test")


def test_without_data_dir_refuses_fast_and_names_the_key(monkeypatch):
    """No data_dir and no from_hub: one line naming the task and the data_dir key, without touching the hub."""
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda *a, **k: calls.append(a) or []))
    for name in ("gsm8k", "math500", "humaneval", "mbpp"):
        with pytest.raises(UsageError) as err:
            get_task(name).examples("test")
        message = str(err.value)
        assert f"task {name!r} needs data_dir" in message and "kwargs.data_dir" in message and "\n" not in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE is on"):
        get_task("gsm8k", from_hub=True).examples("test")
    assert calls == []


def test_from_hub_goes_to_the_hub_and_fails_clearly_offline(monkeypatch):
    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def offline(name, config=None, split=None):
        calls.append((name, config, split))
        raise ConnectionError("Couldn't reach the Hugging Face Hub\n(more detail)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(UsageError) as err:
        get_task("math500", from_hub=True).examples("test")
    message = str(err.value)
    assert "\n" not in message and "pass data_dir=" in message and "ConnectionError" in message
    assert calls == [("HuggingFaceH4/MATH-500", None, "test")]

    rows = [{"question": "2+2?", "answer": "2+2=4\n#### 4"}, {"question": "3+3?", "answer": "#### 6"}]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda name, config=None, split=None: calls.append((name, config, split)) or rows))
    got = get_task("gsm8k", from_hub=True).examples("train", seed=0)
    assert sorted(e.reference for e in got) == ["4", "6"] and calls[-1] == ("openai/gsm8k", "main", "train")
    get_task("mbpp", sanitized=True, from_hub=True)._records("test")
    assert calls[-1] == ("google-research-datasets/mbpp", "sanitized", "test")
