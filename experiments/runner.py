"""Run an ablation: expand a config into cells, generate and score each, store the rows.

A *cell* is (task, strategy entry, budget, seed) x one batch of up to ``batch_size`` examples:
exactly one ``core.decode.generate`` call, so every row of a batch gets the same NFE budget.
Cells already stored in the run directory are skipped, which makes a killed run resumable by
running the same command again (see :mod:`experiments.store`). Under ``torchrun`` each rank runs
its share of the cells into its own shard files (see :mod:`experiments.shard`).

    run_dir = run_ablation(load_config(path), "runs/default")
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional

from refinery.core.torchrun import ProcessLayout
from refinery.experiments import shard as sharding
from refinery.experiments.config import ExperimentConfig, StrategySpec, TaskSpec, validate
from refinery.experiments.shard import rows_files
from refinery.experiments.store import RowsRead, RunStore, row_key

log = logging.getLogger(__name__)

WALL_TIME_FIELDS = ("wall_seconds", "batch_seconds")  # the only fields that differ between identical runs


@dataclass(frozen=True)
class Cell:
    """One generate() call: a batch of examples of one task under one strategy entry, budget and seed."""

    task_index: int  # position in config.tasks
    task: TaskSpec
    strategy: StrategySpec
    budget: str
    seed: int
    batch_index: int
    examples: tuple  # core.tasks Example objects
    part: str = ""  # "" = the whole planned batch; else a hash of the examples left to run in it (grown runs)

    @property
    def batch_id(self) -> str:
        """A file-name-safe, unique id: readable prefix + hash of the exact identity."""
        ident = f"{self.task.name}|{self.task.split}|{self.strategy.label}|{self.budget}|{self.seed}|{self.batch_index}"
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.task.name}.{self.strategy.label}."
                                                    f"{self.budget.replace('/', '-')}.s{self.seed}.b{self.batch_index}")
        part = f"-p{self.part}" if self.part else ""
        return f"{readable}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}{part}"


def load_examples(config: ExperimentConfig) -> dict[int, tuple[object, list]]:
    """task index -> (Task, examples) for every task of the config."""
    from refinery.core.tasks import get_task

    out = {}
    for i, spec in enumerate(config.tasks):
        task = get_task(spec.name, **spec.kwargs)
        examples = task.examples(spec.split, spec.n, spec.seed)
        ids = [e.id for e in examples]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{config.source}: tasks[{i}]: task {spec.name!r} returned duplicate example ids")
        out[i] = (task, examples)
    return out


def plan_cells(config: ExperimentConfig, examples: dict[int, tuple[object, list]]) -> list[Cell]:
    """Every cell of the config, in a fixed order (task, seed, budget, strategy entry, batch)."""
    budgets = list(config.budgets)
    for strat in config.strategies:  # budgets only some entries use come after the shared ones
        budgets += [b for b in config.budgets_for(strat) if b not in budgets]
    cells = []
    for i, spec in enumerate(config.tasks):
        exs = examples[i][1]
        batches = [tuple(exs[k:k + config.batch_size]) for k in range(0, len(exs), config.batch_size)]
        for seed in config.seeds:
            for budget in budgets:
                for strat in config.strategies:
                    if budget in config.budgets_for(strat):
                        cells += [Cell(i, spec, strat, budget, seed, j, batch) for j, batch in enumerate(batches)]
    return cells


def run_cell(cell: Cell, task, model, tokenizer, config: ExperimentConfig) -> tuple[list[dict], object]:
    """Generate and score one batch -> (rows without store fields, CompactTrace or None)."""
    from refinery.core.decode import generate
    from refinery.core.tokenizer import decode_response, render_prompt
    from refinery.strategies import get_strategy

    strategy = get_strategy(cell.strategy.name, **cell.strategy.params)
    prompts = [render_prompt(tokenizer, ex.messages()) for ex in cell.examples]
    cache = config.cache_for(cell.strategy)
    res = generate(model, prompts, config.gen_length, strategy, cell.budget, seed=cell.seed,
                   record_trace=config.save_traces, cache=cache)
    stop = {model.config.eos_token_id, getattr(model.config, "eot_token_id", None)} - {None}
    outputs, generated = [], []
    for b in range(len(prompts)):
        ids = res.tokens[b, : int(res.lengths[b])].tolist()
        n = next((j for j, t in enumerate(ids) if t in stop), len(ids))
        outputs.append(decode_response(tokenizer, ids))
        generated.append(n)
    scores = task.score_many(list(zip(cell.examples, outputs)), workers=config.score_workers)
    drafts = draft_scores = [None] * len(prompts)
    if res.draft_tokens is not None:  # a refinement strategy: score the draft its edit passes started from
        drafts = [decode_response(tokenizer, res.draft_tokens[b, : int(res.draft_lengths[b])].tolist())
                  for b in range(len(prompts))]
        draft_scores = [s.correct for s in task.score_many(list(zip(cell.examples, drafts)),
                                                           workers=config.score_workers)]
    params = strategy.config.as_dict()
    rows = []
    for b, (ex, out, score, draft, draft_ok) in enumerate(zip(cell.examples, outputs, scores, drafts, draft_scores)):
        rows.append(dict(
            key=row_key(cell.task.name, ex.id, cell.strategy.label, cell.budget, cell.seed),
            task=cell.task.name, split=cell.task.split, example_id=ex.id, subset=ex.meta.get("subset"),
            strategy=cell.strategy.name, label=cell.strategy.label, params=_jsonable(params),
            budget=cell.budget, budget_value=float(Fraction(cell.budget)), seed=cell.seed,
            gen_length=config.gen_length, output=out, correct=bool(score.correct),
            answer_correct=bool(score.answer_correct), extracted=score.extracted, error=score.error,
            nfe=int(res.nfe[b]), max_nfe=int(res.max_nfe), tokens_generated=generated[b],
            wall_seconds=res.seconds / len(prompts), batch_seconds=res.seconds,
            draft_output=draft, draft_correct=None if draft_ok is None else bool(draft_ok),
            **({"cache": cache} if cache != "none" else {}),  # uncached rows stay as they were
            **_model_field(config, cell.strategy),
        ))
    trace = res.trace.compact() if res.trace is not None else None
    return rows, trace


def _model_field(config: ExperimentConfig, spec: StrategySpec) -> dict:
    """``{"model": ...}`` for an entry decoding with a checkpoint other than the file's; else {} (so rows of
    configs without per-entry models stay byte-identical)."""
    model = config.model_for(spec)
    return {"model": model} if model != config.model else {}


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def run_ablation(config: ExperimentConfig, out_dir: str | Path, *, progress: bool = True,
                 check_paths: bool = True, on_batch: Optional[Callable[[Cell, list[dict]], None]] = None,
                 repair: bool = False, on_repair: Optional[Callable[[RowsRead], None]] = None) -> Path:
    """Run (or finish) every cell of ``config`` into ``out_dir``; returns the run directory.

    Validation happens first (device, checkpoint, tokenizer and data included), so a bad config fails
    before any model is loaded or the run directory exists; a start that still fails before its first row
    (a model that will not load, a prompt too long for it) removes the directory it created, so the
    corrected command can run. The run directory's writer lock is held until this returns. ``repair``:
    drop damaged rows first (see :func:`experiments.store.repair_damage`); ``on_repair`` gets what was
    dropped. Under torchrun (``RANK``/``WORLD_SIZE`` set) this process runs only its rank's cells, into
    its own shard, and returns once every rank has finished, so the run directory then holds every row."""
    info = ProcessLayout.from_env()
    validate(config, check_paths=check_paths)
    out_dir = check_out_dir(out_dir)
    examples = load_examples(config)  # before the run directory exists: a missing data file leaves no trace
    created = not out_dir.exists()
    with _open_store(out_dir, config, repair, info) as store:
        if store.repair is not None:
            log.info("%s: repair: %s", out_dir, store.repair.summary())
            if on_repair is not None:
                on_repair(store.repair)
        try:
            _run_cells(config, examples, store, progress, on_batch)
        except BaseException:
            if created:
                _remove_new_run_dir(out_dir)  # only when no row landed: nothing computed is lost
            raise
    sharding.finish(info)
    return store.run_dir


def _run_cells(config: ExperimentConfig, examples: dict, store: RunStore, progress: bool,
               on_batch: Optional[Callable[[Cell, list[dict]], None]]) -> None:
    """Generate and store every cell of ``config`` not yet in ``store``."""
    cells = sharding.my_cells(plan_cells(config, examples), store.shard, config.gen_length)
    todo = [c for c in (_pending(c, store) for c in cells) if c is not None]
    log.info("%s: %d cells%s, %d already stored, %d to run", store.run_dir, len(cells),
             f" of rank {store.shard.rank}/{store.shard.world}" if store.shard.sharded else "",
             len(cells) - len(todo), len(todo))
    if not todo:
        return
    models = ModelCache(config, store.shard)
    bar = _progress(len(cells), len(cells) - len(todo), enabled=progress)
    try:
        for cell in todo:
            bar.set_postfix_str(f"{cell.task.name} {cell.strategy.label} {cell.budget}", refresh=False)
            model, tokenizer = models.get(config.model_for(cell.strategy))
            rows, trace = run_cell(cell, examples[cell.task_index][0], model, tokenizer, config)
            store.write_batch(cell.batch_id, rows, trace)
            if on_batch is not None:
                on_batch(cell, rows)
            bar.update(1)
    finally:
        bar.close()


def _pending(cell: Cell, store: RunStore) -> Optional[Cell]:
    """``cell``, the part of it still to run, or None when all its rows are stored.

    A fresh or resumed run stores whole batches, so a batch is either done or not. A grown run (a
    larger ``--limit``) plans batches that hold stored examples and new ones: only the new ones run,
    as a batch of their own whose id names them (every row gets the same seed and budget either way)."""
    keys = [row_key(cell.task.name, ex.id, cell.strategy.label, cell.budget, cell.seed) for ex in cell.examples]
    missing = tuple(ex for ex, k in zip(cell.examples, keys) if k not in store.done_keys)
    if not missing:
        return None
    if len(missing) == len(cell.examples):
        return cell
    return dataclasses.replace(cell, examples=missing, part=_part_id(missing))


def _part_id(examples: tuple) -> str:
    return hashlib.sha1("|".join(ex.id for ex in examples).encode()).hexdigest()[:8]


def _open_store(out_dir: Path, config: ExperimentConfig, repair: bool, shard: ProcessLayout) -> RunStore:
    try:
        return RunStore.open(out_dir, config, repair=repair, shard=shard)
    except UnicodeDecodeError:  # the codec's message names no file: name it
        from refinery.core.errors import read_text

        for name in ("rows.jsonl", "config.yaml"):
            if (out_dir / name).is_file():
                read_text(out_dir / name)
        raise


def check_out_dir(out_dir: str | Path) -> Path:
    """The run directory path, refused when it (or a parent) is an existing file."""
    from refinery.core.errors import UsageError

    out_dir = Path(out_dir)
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                what = "is" if p == out_dir else f"lies under {p}, which is"
                raise UsageError(f"{out_dir}: the run directory (--out) {what} a file, not a directory")
            break
    return out_dir


def _remove_new_run_dir(run_dir: Path) -> None:
    """Undo a failed start: remove what RunStore.open created in a directory that did not exist, when no
    row landed (nothing computed is lost)."""
    import shutil

    if any(p.stat().st_size > 0 for p in rows_files(run_dir)):  # every shard's rows, not only this rank's
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("%s: removed the run directory of a start that failed before its first row", run_dir)


class ModelCache:
    """(model, tokenizer) per checkpoint directory of a config, each loaded on first use and kept: a run whose
    entries name several checkpoints loads each once, and one that never reaches an entry never loads it."""

    def __init__(self, config: ExperimentConfig, shard: ProcessLayout = ProcessLayout()):
        self.config, self.shard = config, shard
        self.loaded: dict[str, tuple] = {}

    def get(self, name: str) -> tuple:
        from refinery.core.checkpoint import resolve_model_path

        key = str(resolve_model_path(name))  # two names of one checkpoint ('embedded', 'embedded-stage3'): once
        if key not in self.loaded:
            log.info("loading model %s (%s)", name, key)
            self.loaded[key] = load_model_for(self.config, self.shard, model=name)
        return self.loaded[key]


def load_model_for(config: ExperimentConfig, shard: ProcessLayout = ProcessLayout(),
                   model: Optional[str] = None):
    """-> (model, tokenizer) of ``config`` (or of the checkpoint ``model`` an entry names) on its device
    (each torchrun rank on its own GPU). The tokenizer is the config's ``tokenizer``, else the checkpoint's."""
    import torch

    from refinery.core.checkpoint import load_model, parse_dtype, resolve_model_path
    from refinery.core.tokenizer import load_tokenizer

    model_dir = resolve_model_path(model if model is not None else config.model)
    device = config.device
    if device == "auto":  # the GPU where there is one
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = shard.device(device)
    model = load_model(model_dir, device, parse_dtype(config.dtype))
    tokenizer = load_tokenizer(config.tokenizer or model_dir, delete_token=config.delete_token)
    return model, tokenizer


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="ablation cells", unit="cell", disable=not enabled,
                dynamic_ncols=True)
