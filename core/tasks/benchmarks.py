"""The real benchmarks: GSM8K and MATH-500 (maths), HumanEval and MBPP (code).

    task = get_task("gsm8k", data_dir="../shared/data")   # or from_hub=True: datasets.load_dataset (online)
    examples = task.examples("test", n=100, seed=0)
    scores = task.score_many([(ex, out) for ex, out in zip(examples, outputs)], workers=8)

``data_dir`` holds each benchmark's folder (``gsm8k/test.jsonl``, ``math500/test.jsonl``,
``humaneval/HumanEval.jsonl.gz``, ``mbpp/mbpp.jsonl``) or is that folder itself. Prompts follow
the usual instruct-model evaluation convention (ME-DLM / LLaDA): maths is asked to reason step
by step and put the final answer in ``\\boxed{}``; code is asked for one ```python block.

Scoring. Maths: the last complete ``\\boxed{...}`` of the output (GSM8K falls back to the number
after ``####``, then to the last number) is compared with the gold answer by ``math-verify``
(symbolic equivalence: ``0.5`` = ``\\frac12``, ``1,000`` = ``1000``); there is no looser notion,
so ``answer_correct == correct``. Code: the first ```python block (see :func:`extract_code`)
plus the benchmark's tests runs in :mod:`core.sandbox`; correct only if it ran to completion.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import re
import threading
import time
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from refinery.core.errors import UsageError
from refinery.core.tasks.base import Example, Score, Task, check_split, register_task

log = logging.getLogger(__name__)

MATH_SYSTEM = ("Solve the following problem. Reason step by step, then give the final answer "
               "on its own inside \\boxed{}, for example \\boxed{42}.")
CODE_SYSTEM = ("You are an expert Python programmer. Give your solution as complete, self-contained "
               "Python code in a single ```python code block.")
DEFAULT_TIMEOUT = 10.0  # seconds per program, interpreter start-up included

# MBPP's conventional split by task_id (Austin et al., 2021): 1-10 are few-shot prompts.
MBPP_SPLITS = {"test": range(11, 511), "validation": range(511, 601), "train": range(601, 975)}


# ------------------------------------------------------------------------------- loading

def _find_file(data_dir: str, folder: str, filename: str) -> Path:
    """``data_dir/folder/filename``, or ``data_dir/filename`` when data_dir is the folder itself."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: benchmark data directory not found")
    for path in (root / folder / filename, root / filename):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{root / folder / filename}: no such file (nor {root / filename})")


def _read_records(path: Path) -> list[tuple[str, dict]]:
    """(``file:line`` or ``file[i]``, record) for a .jsonl, .jsonl.gz or JSON-list file."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot read: {e}") from None
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of records")
        records = [(f"{path}[{i}]", row) for i, row in enumerate(rows)]
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    for where, row in records:
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return records


def _from_hub(name: str, config: Optional[str], split: str, folder: str) -> list[tuple[str, dict]]:
    """Rows of a Hugging Face dataset (needs the network or a warm ``datasets`` cache)."""
    try:
        from datasets import load_dataset

        rows = load_dataset(name, config, split=split)
        return [(f"{name}[{split}][{i}]", dict(row)) for i, row in enumerate(rows)]
    except Exception as e:  # offline, missing package, renamed dataset: one message for all
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"could not load {name!r} through datasets.load_dataset ({type(e).__name__}: "
                           f"{reason}); pass data_dir=<directory holding {folder}/> "
                           f"(e.g. ../shared/data)") from None


def _field(row: dict, key: str, where: str, kind: type = str) -> Any:
    if key not in row:
        raise ValueError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind):
        raise ValueError(f"{where}: field {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


class _Benchmark(Task):
    """Shared plumbing: file or hub loading, per-split caching, seeded order, split checks."""

    splits: tuple[str, ...] = ("train", "test")
    folder = ""  # sub-directory of data_dir, as in ../shared/data
    default_system: Optional[str] = None

    def __init__(self, data_dir: Optional[str] = None, system_prompt: Optional[str] = None, from_hub: bool = False):
        self.data_dir = data_dir
        self.from_hub = bool(from_hub)  # without a data_dir, load through datasets only when asked to
        # None: the task's default; "" means no system turn at all
        self.system = self.default_system if system_prompt is None else system_prompt
        self._cache: dict[str, list[Example]] = {}

    def _records(self, split: str) -> list[tuple[str, dict]]:
        raise NotImplementedError

    def _filename(self, split: str) -> str:
        """The file of ``split`` inside ``data_dir/<folder>/``."""
        raise NotImplementedError

    def _data_file(self, split: str) -> Path:
        return _find_file(self.data_dir, self.folder, self._filename(split))

    def check_data(self, split: str) -> None:
        """Fail fast (no network) when ``split`` cannot be loaded: no data_dir and no from_hub, a hub load
        while HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, or a data_dir without the split's file."""
        if self.data_dir is not None:
            self._data_file(split)
            return
        if not self.from_hub:
            raise UsageError(f"task {self.name!r} needs data_dir (the task's kwargs.data_dir: a directory "
                             f"holding {self.folder}/{self._filename(split)}, e.g. ../shared/data), or "
                             "from_hub: true to load it through datasets.load_dataset")
        offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
                   if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
        if offline:
            raise UsageError(f"task {self.name!r}: from_hub is set but {offline[0]} is on and there is no data_dir; "
                             f"set data_dir to a directory holding {self.folder}/")

    def _example(self, where: str, row: dict, index: int) -> Example:
        raise NotImplementedError

    def examples(self, split: str, n: Optional[int] = None, seed: int = 0) -> list[Example]:
        """``split`` shuffled by ``seed`` (same seed, same order), then cut to its first ``n`` (None: all)."""
        check_split(self.name, split)
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no {split!r} split; it has {self.splits}")
        if n is not None and n < 0:
            raise ValueError(f"task {self.name!r}: n must be >= 0 or None, got {n}")
        if split not in self._cache:
            self.check_data(split)
            self._cache[split] = [self._example(where, row, i) for i, (where, row) in enumerate(self._records(split))]
            log.debug("%s/%s: %d examples", self.name, split, len(self._cache[split]))
        order = list(self._cache[split])
        random.Random(seed).shuffle(order)
        return order if n is None else order[:n]


# ------------------------------------------------------------------------------- maths

def last_boxed(text: str) -> Optional[str]:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included.

    A box whose closing brace never came (a truncated output) is skipped for the one before it.
    ``\\{`` and ``\\}`` are literal braces and do not count.
    """
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        depth, i = 1, m.end()
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0:
                return text[m.end():i].strip()
            i += 1
    return None


_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def last_number(text: str) -> Optional[str]:
    """The last number in ``text``, thousands separators removed (``1,234.5`` -> ``1234.5``)."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def _timeout() -> Optional[int]:
    # math-verify times out through SIGALRM, which only the main thread may install (the app
    # scores from worker threads); elsewhere it runs without a timeout.
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=8192)
def _parse(latex: str, timeout: Optional[int]) -> list:
    from math_verify import parse

    return parse(latex, parsing_timeout=timeout)


def verified_equal(gold: str, answer: str) -> bool:
    """math-verify's verdict on gold vs answer (both LaTeX without delimiters)."""
    from math_verify import verify

    timeout = _timeout()
    g, a = _parse(f"${gold}$", timeout), _parse(f"\\boxed{{{answer}}}", timeout)
    return bool(g) and bool(a) and bool(verify(g, a, timeout_seconds=timeout))


def answers_match(gold: str, answer: str) -> bool:
    """Identical up to spaces, or symbolically equal according to math-verify."""
    def norm(s: str) -> str:
        return re.sub(r"\s+", "", s).strip("$")

    return norm(gold) == norm(answer) or verified_equal(gold, answer)


class _MathTask(_Benchmark):
    default_system = MATH_SYSTEM

    def extract(self, output: str) -> tuple[Optional[str], str]:
        """(answer or None, what was looked for)."""
        return last_boxed(output), "no \\boxed{} answer in the output"

    def score(self, example: Example, output: str) -> Score:
        answer, missing = self.extract(output)
        if answer is None:
            return Score(False, False, None, missing)
        ok = answers_match(example.reference, answer)
        error = None if ok else f"answer {answer!r} does not match {example.reference!r}".replace("\n", " ")
        return Score(ok, ok, answer, error)


@register_task("gsm8k")
class GSM8K(_MathTask):
    """Grade-school maths word problems; the gold answer is the integer after ``#### ``."""

    folder = "gsm8k"

    def _records(self, split: str) -> list[tuple[str, dict]]:
        if self.data_dir is None:
            return _from_hub("openai/gsm8k", "main", split, self.folder)
        return _read_records(self._data_file(split))

    def _filename(self, split: str) -> str:
        return f"{split}.jsonl"

    def _example(self, where: str, row: dict, index: int) -> Example:
        solution = _field(row, "answer", where)
        if "####" not in solution:
            raise ValueError(f"{where}: field 'answer' has no '#### <final answer>'")
        gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
        return Example(id=str(index), task=self.name, prompt=_field(row, "question", where), reference=gold,
                       meta={"solution": solution}, system=self.system or None)

    def extract(self, output: str) -> tuple[Optional[str], str]:
        boxed = last_boxed(output)
        if boxed is not None:
            return boxed.replace(",", "") if _NUMBER.fullmatch(boxed) else boxed, ""
        if "####" in output:
            after = last_number(output.rsplit("####", 1)[1].split("\n", 1)[0])
            if after is not None:
                return after, ""
        return last_number(output), "no \\boxed{} answer and no number in the output"


@register_task("math500")
class Math500(_MathTask):
    """The 500 MATH problems chosen by PRM800K; ids are MATH's ``unique_id`` when present, else the index."""

    folder = "math500"
    splits = ("test",)

    def _records(self, split: str) -> list[tuple[str, dict]]:
        if self.data_dir is None:
            return _from_hub("HuggingFaceH4/MATH-500", None, split, self.folder)
        return _read_records(self._data_file(split))

    def _filename(self, split: str) -> str:
        return "test.jsonl"

    def _example(self, where: str, row: dict, index: int) -> Example:
        meta = {"solution": _field(row, "solution", where), "subject": row.get("subject"), "level": row.get("level")}
        # MATH's own id where the file has it (the Hub copy does; ../shared/data's does not): else the line index
        ident = _field(row, "unique_id", where) if "unique_id" in row else str(index)
        return Example(id=ident, task=self.name, prompt=_field(row, "problem", where),
                       reference=_field(row, "answer", where), meta=meta, system=self.system or None)


# ------------------------------------------------------------------------------- code

_FENCE = re.compile(r"```([^\n`]*)")
_PY_TAGS = ("", "python", "py", "python3")


def extract_code(text: str) -> str:
    """The code in a model's answer.

    The first complete fenced block tagged python/py/python3 or untagged (else the first
    complete block of any language); failing that, everything after an unterminated opening
    fence; with no fence at all, the whole text. The info string after an opening fence is
    dropped only when it is a single word (a language tag); otherwise it is code. The block is
    returned exactly as written: nothing inside the fences is stripped.
    """
    blocks, pos = [], 0
    while (m := _FENCE.search(text, pos)) is not None:
        info = m.group(1)
        tagged = re.fullmatch(r"\s*[\w+.#-]*\s*", info) is not None
        start = m.start() + 3 if not tagged else m.end() + (text[m.end():m.end() + 1] == "\n")
        close = text.find("```", start)
        if close < 0:
            if not blocks:
                return text[start:]
            break
        blocks.append((info.strip().lower() if tagged else "", text[start:close]))
        pos = close + 3
    if not blocks:
        return text
    return next((code for tag, code in blocks if tag in _PY_TAGS), blocks[0][1])


class _CodeTask(_Benchmark):
    default_system = CODE_SYSTEM

    def __init__(self, data_dir: Optional[str] = None, system_prompt: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT, memory_mb: Optional[int] = 512, from_hub: bool = False):
        super().__init__(data_dir, system_prompt, from_hub)
        if timeout <= 0:
            raise ValueError(f"task {self.name!r}: timeout must be > 0 seconds, got {timeout}")
        self.timeout = float(timeout)
        self.memory_mb = memory_mb

    def program(self, example: Example, code: str) -> str:
        """The program to run: the model's code and the benchmark's tests."""
        raise NotImplementedError

    def score(self, example: Example, output: str) -> Score:
        return self.score_many([(example, output)])[0]

    def score_many(self, pairs: Sequence[tuple[Example, str]], workers: int = 1) -> list[Score]:
        """Run every non-empty program on a pool of ``workers`` sandboxes; scores in input order."""
        from refinery.core.sandbox import run_many

        codes = [extract_code(out) for _, out in pairs]
        todo = [i for i, code in enumerate(codes) if code.strip()]
        start = time.monotonic()
        results = run_many([self.program(pairs[i][0], codes[i]) for i in todo], workers=workers,
                           timeout=self.timeout, memory_mb=self.memory_mb)
        log.debug("%s: ran %d programs on %d workers in %.1fs", self.name, len(todo), workers, time.monotonic() - start)
        scores = [Score(False, False, code, "empty output: no code to run") for code in codes]
        for i, r in zip(todo, results):
            last = (r.stderr.strip().splitlines() or [""])[-1].strip()
            error = None if r.passed else f"{r.status}: {last}" if last else r.status
            scores[i] = Score(r.passed, r.passed, codes[i], error)
        return scores


@register_task("humaneval")
class HumanEval(_CodeTask):
    """164 hand-written functions to complete (Chen et al., 2021), checked by ``check(entry_point)``."""

    folder = "humaneval"
    splits = ("test",)

    def _records(self, split: str) -> list[tuple[str, dict]]:
        if self.data_dir is None:
            return _from_hub("openai/openai_humaneval", None, split, self.folder)
        return _read_records(self._data_file(split))

    def _filename(self, split: str) -> str:
        return "HumanEval.jsonl.gz"

    def _example(self, where: str, row: dict, index: int) -> Example:
        prompt = _field(row, "prompt", where)
        meta = {"prompt": prompt, "test": _field(row, "test", where), "entry_point": _field(row, "entry_point", where)}
        shown = prompt.lstrip("\n").rstrip()
        user = ("Complete the following Python function. Write the whole function, signature included, "
                f"in a ```python code block.\n\n```python\n{shown}\n```")
        return Example(id=_field(row, "task_id", where), task=self.name, prompt=user,
                       reference=prompt + _field(row, "canonical_solution", where), meta=meta,
                       system=self.system or None)

    def program(self, example: Example, code: str) -> str:
        """The HumanEval prompt, then the model's code, then the tests.

        Without ``def <entry_point>`` the code is taken to be the function's body and continues
        the prompt directly. With it, the prompt still comes first (its stub is then redefined),
        so that the imports and helper functions the model was shown are defined as well.
        """
        prompt, entry = example.meta["prompt"], example.meta["entry_point"]
        has_def = re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE) is not None
        body = prompt + ("\n" + code if has_def else code)
        return f"{body}\n\n{example.meta['test']}\n\ncheck({entry})\n"


@register_task("mbpp")
class MBPP(_CodeTask):
    """Mostly Basic Python Problems (Austin et al., 2021): test = task_id 11-510, train = 601-974.

    ``sanitized=True`` reads the hand-checked subset (``sanitized-mbpp.json``, 427 problems; its
    ``prompt`` field for the text and ``test_imports`` for the set-up), split the same way.
    """

    folder = "mbpp"

    def __init__(self, data_dir: Optional[str] = None, system_prompt: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT, memory_mb: Optional[int] = 512, sanitized: bool = False,
                 from_hub: bool = False):
        super().__init__(data_dir, system_prompt, timeout, memory_mb, from_hub)
        self.sanitized = sanitized

    def _records(self, split: str) -> list[tuple[str, dict]]:
        if self.data_dir is None:
            return _from_hub("google-research-datasets/mbpp", "sanitized" if self.sanitized else "full",
                             split, self.folder)
        path = self._data_file(split)
        keep = MBPP_SPLITS[split]
        return [(where, row) for where, row in _read_records(path) if _field(row, "task_id", where, int) in keep]

    def _filename(self, split: str) -> str:
        return "sanitized-mbpp.json" if self.sanitized else "mbpp.jsonl"

    def _example(self, where: str, row: dict, index: int) -> Example:
        text = _field(row, "prompt" if self.sanitized else "text", where)
        tests = _field(row, "test_list", where, list)
        if not tests or not all(isinstance(t, str) for t in tests):
            raise ValueError(f"{where}: field 'test_list' should be a non-empty list of strings")
        if self.sanitized:
            setup = "\n".join(_field(row, "test_imports", where, list))
        else:
            setup = _field(row, "test_setup_code", where)
        user = f"{text.strip()}\nYour code should pass tests like this one:\n\n```python\n{tests[0].strip()}\n```"
        return Example(id=str(_field(row, "task_id", where, int)), task=self.name, prompt=user,
                       reference=_field(row, "code", where), meta={"test_list": tests, "test_setup_code": setup},
                       system=self.system or None)

    def program(self, example: Example, code: str) -> str:
        tests = "\n".join(example.meta["test_list"])
        return f"{code}\n\n{example.meta['test_setup_code']}\n\n{tests}\n"
