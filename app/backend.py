"""What the demo computes, without any Gradio: cached models, prompts, streamed generation, saved rows.

The app never decodes on its own: :func:`stream_generate` runs :func:`core.decode.generate` in a worker
thread and turns its ``on_step`` records into growing compact traces, so long generations appear pass by
pass. Models are loaded on first use (not at import) and cached per checkpoint directory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from refinery.app.render import TokenPieces, TraceView, final_ids
from refinery.core.tasks.embedded import EMBEDDED_TASKS  # noqa: F401  (the demo's task list: one definition)
from refinery.core.trace import CompactTrace, StepRecord, Trace

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 512
MAX_GEN_LENGTH = 1024
BENCHMARK_TASKS = ("gsm8k", "math500", "humaneval", "mbpp")
FREE_TEXT = "free text"


class ModelCache:
    """(model, tokenizer) per resolved checkpoint directory, loaded on first request; thread-safe."""

    def __init__(self, device: str = "cpu", dtype: Optional[torch.dtype] = None):
        self.device, self.dtype = device, dtype
        self._models: dict[str, tuple[Any, Any]] = {}
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name_or_path: str) -> tuple[Any, Any]:
        from refinery.core.checkpoint import load_model_and_tokenizer, resolve_model_path

        key = str(resolve_model_path(name_or_path))
        with self._lock:
            if key not in self._models:
                log.info("loading %s", key)
                self._models[key] = load_model_and_tokenizer(key, self.device, self.dtype)
            return self._models[key]

    def tokenizer(self, name_or_path: str):
        """Only the tokenizer (opening a saved trace needs no model)."""
        from refinery.core.checkpoint import resolve_model_path
        from refinery.core.tokenizer import load_tokenizer

        key = str(resolve_model_path(name_or_path))
        with self._lock:
            if key in self._models:
                return self._models[key][1]
            if key not in self._tokenizers:
                self._tokenizers[key] = load_tokenizer(key)
            return self._tokenizers[key]


@dataclass
class PromptChoice:
    """A prompt drawn from a task: kept so that the output can be scored with ``task.score``."""

    task: Any
    example: Any


def draw_example(source: str, index: int, seed: int, data_dir: Optional[str]) -> PromptChoice:
    """Example ``index`` of ``source``'s test split (embedded tasks are generated, benchmarks need data_dir)."""
    from refinery.core.tasks import get_task

    if index < 0:
        raise ValueError(f"example index {index} must be >= 0")
    if source in BENCHMARK_TASKS:
        if not data_dir or not Path(data_dir).expanduser().is_dir():
            raise FileNotFoundError(f"{data_dir or '(empty)'}: benchmark data directory not found for {source!r}")
        task = get_task(source, data_dir=str(Path(data_dir).expanduser()))
    else:
        task = get_task(source)
    examples = task.examples("test", index + 1, seed)
    if index >= len(examples):
        raise ValueError(f"task {source!r} has only {len(examples)} test examples")
    return PromptChoice(task, examples[index])


def prompt_ids(tokenizer, text: str, choice: Optional[PromptChoice] = None) -> list[int]:
    """Chat-formatted prompt ids (the task's own messages when the prompt came from a task), capped."""
    from refinery.core.tokenizer import render_prompt

    if choice is not None:
        messages = choice.example.messages()
    else:
        if not text.strip():
            raise ValueError("the prompt is empty")
        messages = [{"role": "user", "content": text}]
    ids = render_prompt(tokenizer, messages)
    if len(ids) > MAX_PROMPT_TOKENS:
        raise ValueError(f"the prompt is {len(ids)} tokens long; the app caps prompts at {MAX_PROMPT_TOKENS}")
    return ids


def max_gen_length(max_sequence_length: Optional[int] = None, prompt_tokens: int = 0) -> int:
    """The longest generation the app offers: its own cap, and what the model's positions leave after the prompt."""
    if max_sequence_length is None:
        return MAX_GEN_LENGTH
    return max(0, min(MAX_GEN_LENGTH, int(max_sequence_length) - prompt_tokens))


def check_gen_length(gen_length: int, max_sequence_length: Optional[int] = None, prompt_tokens: int = 0) -> int:
    """``gen_length`` as an int, refused outside 1..the app's cap (and, given the model's
    ``max_sequence_length``, beyond what is left after a prompt of ``prompt_tokens``)."""
    gen_length = int(gen_length)
    top = max_gen_length(max_sequence_length, prompt_tokens)
    if not 1 <= gen_length <= top:
        if max_sequence_length is not None and top < MAX_GEN_LENGTH:
            raise ValueError(f"generation length {gen_length} must lie in 1..{top}: the model's max_sequence_length "
                             f"is {max_sequence_length} and the prompt takes {prompt_tokens} tokens")
        raise ValueError(f"generation length {gen_length} must lie in 1..{MAX_GEN_LENGTH}")
    return gen_length


def model_max_sequence_length(name_or_path: str) -> Optional[int]:
    """max_sequence_length from a checkpoint's config.json without loading it (None when unreadable)."""
    import json

    from refinery.core.checkpoint import resolve_model_path

    try:
        value = json.loads((resolve_model_path(name_or_path) / "config.json").read_text()).get("max_sequence_length")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Cancelled(Exception):
    """Raised inside ``on_step`` to stop a generation whose page went away."""


def stream_generate(model, ids: list[int], gen_length: int, strategy, budget: str, seed: int = 0,
                    interval: float = 0.25) -> Iterator[tuple[CompactTrace, Optional[Any]]]:
    """Run ``generate`` for one prompt in a worker thread.

    Yields (partial trace, None) at most every ``interval`` seconds while passes arrive, then
    (final trace, GenerationResult). Errors of the worker are re-raised here; closing the iterator
    stops the worker at its next pass.
    """
    from refinery.core.decode import generate

    q: queue.Queue = queue.Queue()
    stop = threading.Event()
    cfg = model.config
    # generate() starts from an all-mask region when init is None; the partial trace mirrors that.
    partial = Trace(torch.full((1, gen_length), cfg.mask_token_id), torch.tensor([gen_length]),
                    cfg.mask_token_id, cfg.pad_token_id)

    def on_step(_: int, record: StepRecord) -> None:
        if stop.is_set():
            raise _Cancelled
        q.put(record)

    def work() -> None:
        try:
            q.put(("done", generate(model, [ids], gen_length, strategy, budget, seed=seed, on_step=on_step)))
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            q.put(("error", e))

    worker = threading.Thread(target=work, name="refinery-generate", daemon=True)
    worker.start()
    last, dirty = time.monotonic(), False
    try:
        while True:
            try:
                item = q.get(timeout=interval)
            except queue.Empty:
                item = None
            if isinstance(item, StepRecord):
                partial.append(item)
                dirty = True
            elif isinstance(item, tuple):
                kind, value = item
                if kind == "error":
                    raise value
                yield value.trace.compact(), value
                return
            if dirty and time.monotonic() - last >= interval:
                yield partial.compact(), None
                last, dirty = time.monotonic(), False
    finally:
        stop.set()


@dataclass
class RunSpec:
    """One strategy column to compute: registry name, changed parameters, column label."""

    name: str
    params: dict = field(default_factory=dict)
    label: str = ""


def run_views(model, tokenizer, ids: list[int], specs: Sequence[RunSpec], budget: str, gen_length: int,
              seed: int, choice: Optional[PromptChoice] = None, interval: float = 0.25
              ) -> Iterator[list[TraceView]]:
    """Run every strategy in turn, yielding the full list of column views after each streamed update.

    A strategy whose parameters or budget are impossible gets its error in its column; the others run."""
    from refinery.strategies import get_strategy

    pieces = TokenPieces(tokenizer, model.config.mask_token_id)
    views = [TraceView(s.label or s.name, note="waiting", pieces=pieces) for s in specs]
    for view, spec in zip(views, specs):
        view.note = "running"
        try:
            strategy = get_strategy(spec.name, **spec.params)
            for trace, result in stream_generate(model, ids, gen_length, strategy, budget, seed, interval):
                view.trace = trace
                if result is not None:
                    finish_view(view, tokenizer, int(result.nfe[0]), result.max_nfe, choice)
                yield views
        except (ValueError, KeyError, RuntimeError) as e:
            view.trace, view.note = None, f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}"
            yield views
    yield views


def finish_view(view: TraceView, tokenizer, nfe: Optional[int], max_nfe: Optional[int],
                choice: Optional[PromptChoice] = None, output: Optional[str] = None,
                correct: Optional[bool] = None) -> TraceView:
    """Fill in the final text, NFE and (for task prompts) correctness of a finished column."""
    from refinery.core.tokenizer import decode_response

    view.nfe, view.max_nfe = nfe, max_nfe
    view.final_text = output if output is not None else decode_response(tokenizer, final_ids(view.trace, view.row))
    view.correct, view.note = correct, ""
    if choice is not None and correct is None:
        score = choice.task.score(choice.example, view.final_text)
        view.correct = bool(score.correct)
        extracted = getattr(score, "extracted", None)
        view.note = f"extracted {extracted!r}" if extracted is not None else ""
    return view


def saved_views(run_dir: str, rows: Sequence[dict], tokenizer) -> list[TraceView]:
    """Columns for rows of a saved ablation run: their stored traces, outputs, NFE and correctness."""
    from refinery.app.runs import load_row_trace, row_label

    views = []
    for row in rows:
        trace, index = load_row_trace(run_dir, row)
        view = TraceView(row_label(row), trace, index, pieces=TokenPieces(tokenizer, trace.mask_id))
        correct = row.get("correct")
        finish_view(view, tokenizer, row.get("nfe"), row.get("max_nfe"), output=row.get("output"),
                    correct=None if correct is None else bool(correct))
        if row.get("extracted") is not None:
            view.note = f"extracted {row['extracted']!r}"
        views.append(view)
    return views
