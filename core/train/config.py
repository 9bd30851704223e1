"""Typed training configs: one YAML file maps onto frozen dataclasses, unknown keys are errors.

    stage: sft                      # pretrain | sft | stage3 | r2ft
    tokenizer: runs/tok             # tokenizer directory (copied into every checkpoint)
    model: {init_from: runs/stage1, add_next_token_head: copy}
    data: {train_files: [data/sft.jsonl], seq_len: 512, pad_len: 32}
    optim: {lr: 1.0e-4, max_steps: 1000, micro_batch_size: 4}
    engine: {out_dir: runs/stage2}

An optional ``recipe: medlm | conv-paper`` (core/train/recipes.py) fills in a paper's field values under the
explicit keys; the default ``project`` changes nothing. Relative paths are taken relative to the working
directory. Every section is optional except ``stage`` and ``data.train_files`` (and ``tokenizer`` for a fresh
model). A bad key or value raises ``ValueError`` naming the file and the dotted key, before anything is built.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from core.errors import read_text

Stage = Literal["pretrain", "sft", "stage3", "r2ft"]


@dataclass(frozen=True)
class ModelSection:
    init_from: Optional[str] = None  # checkpoint directory of the previous stage; None = fresh model
    config: dict = field(default_factory=dict)  # LLaDAConfig kwargs for a fresh model (vocab/special ids from tokenizer)
    add_next_token_head: Literal["none", "copy", "fresh"] = "none"  # attach the ME-DLM head if missing
    gradient_checkpointing: bool = False  # recompute block activations in backward (memory for compute)


@dataclass(frozen=True)
class DataSection:
    train_files: tuple = ()  # JSONL files; pretrain: {"text"}; other stages: {"history", "response"}
    seq_len: int = 512  # pretrain: packed chunk length; chat stages: longest prompt + padded response
    pad_len: int = 32  # responses (+<|eot_id|>) are padded with eos to a multiple of this
    random_length_prob: float = 0.0  # pretrain: share of batches cropped to a random length (LLaDA: 0.01)
    shuffle: bool = True  # reshuffle every epoch (seeded)


@dataclass(frozen=True)
class ObjectiveSection:
    min_t: float = 1e-3  # t ~ U(min_t, max_t): per-sequence masking probability
    max_t: float = 1.0
    normalize: Literal["tokens", "masked"] = "tokens"  # divide the 1/t-weighted sum by all (response) tokens or by masked ones
    next_head_weight: float = 1.0  # weight of the next-token head's loss (when the model has the head)
    t_sampling: Literal["sequence", "micro_batch"] = "sequence"  # one t per row (LLaDA) or per micro-batch (ME-DLM)
    # chat stages: may the first response token be masked? True is the project's gap-0 fix (the next-token head
    # at the last prompt position then learns what opens the answer); ME-DLM keeps that token visible.
    mask_first_response_token: bool = True


@dataclass(frozen=True)
class Stage3Section:
    intermediate_ratio: float = 0.5  # probability that a step trains on the model's own drafts
    k_choices: tuple = (2, 4, 8, 16)  # tokens committed per rollout pass, sampled per step
    rollout_passes: int = 2  # forward passes a rollout may spend (the cost bound: see core/train/stage3.py)
    max_diffusion_steps: int = 0  # edit passes applied to drafts at the end of the curriculum
    curriculum_steps: Optional[int] = None  # steps over which edit passes ramp 0 -> max (None = optim.max_steps)
    edit_passes_sampling: Literal["fixed", "uniform"] = "fixed"  # uniform: 0..the curriculum's count per draft step
    temperature: float = 0.0  # rollout sampling temperature
    nearest_reference: bool = True  # label a draft against the closest of the record's valid responses
    # (its "response" and "references"): edits then move toward the surface form the draft already follows
    edit_strategy_params: dict = field(default_factory=dict)  # extra params of the "edit" strategy
    edit_preset: Optional[str] = None  # named preset of the "edit" strategy (edit_strategy_params override it)
    rollout_order: Literal["confidence", "random"] = "confidence"  # which masks a rollout pass unmasks first
    full_rollout: bool = False  # unmask k per pass until no mask is left (ME-DLM) instead of rollout_passes
    curriculum: Literal["ramp", "epoch_fraction"] = "ramp"  # ramp: reach max at curriculum_steps;
    # epoch_fraction: int(fraction of the horizon done * max), ME-DLM's (max itself is never reached)
    draft_loss_weight: Literal["none", "inverse_t"] = "none"  # inverse_t: (CE_cur + CE_next) / t (ME-DLM)
    draft_padding: Literal["cut", "strip"] = "cut"  # cut the draft at its first eos/pad, or drop them all (ME-DLM)
    ignore_deleted_gaps: bool = False  # leave the gap after a deleted draft token unlabelled (ME-DLM)
    labels: Literal["project", "medlm"] = "project"  # label layout (core/train/stage3.py label_rows)


@dataclass(frozen=True)
class R2FTSection:
    beta_w: float = 1.0  # weight of the winner's log-prob inside the sigmoid
    beta_l: float = 1.0  # weight of the loser's log-prob inside the sigmoid
    gamma: float = 0.0  # margin
    beta_a: float = 0.1  # weight of the plain likelihood term on the winner
    repeat_ns: tuple = (1, 2, 3, 4)  # the loser tiles the last n context tokens, n sampled from here
    min_suffix_frac: float = 0.1  # masked suffix covers a fraction U(min_suffix_frac, 1) of the response
    lp_reduction: Literal["mean", "sum", "length"] = "mean"  # log-prob of a suffix: per-token mean or sum;
    # length: winner summed over its masked tokens / response length, loser / span length (the Conv repo)
    rejected: Literal["suffix_tile", "phrase_span"] = "suffix_tile"  # how the loser is built (core/train/r2ft.py)
    phrase_len: tuple = (1, 14)  # phrase_span: repeated phrase length, inclusive range
    span_len: tuple = (30, 49)  # phrase_span: length of the span the phrase is repeated over, inclusive range
    eos_prob: float = 1.0  # phrase_span: probability that one eos is written into the span
    batch_reduction: Literal["mean", "sum"] = "mean"  # per-row losses averaged or summed over the micro-batch
    ban_mask_logit: bool = False  # drop the mask id from the softmax (the Conv repo's SUBS parameterisation)


@dataclass(frozen=True)
class OptimSection:
    lr: float = 1e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 0  # linear warmup from 0
    max_steps: int = 1000  # optimiser steps
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max grad norm; 0 = off
    micro_batch_size: int = 4  # sequences per forward pass (per process)
    grad_accum: int = 1  # micro-batches per optimiser step


@dataclass(frozen=True)
class EngineSection:
    out_dir: str = "runs/train"  # final model + tokenizer; checkpoints/ and metrics.jsonl inside
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast on GPU (DeepSpeed: its bf16 mode)
    deepspeed: Optional[str] = None  # DeepSpeed JSON (experiments/deepspeed/zero*.json); needed for >1 process
    save_every: int = 100  # optimiser steps between checkpoints (0 = only the final save)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    max_shard_size: str = "16MB"  # safetensors shard size of saved models
    log_every: int = 1  # steps between TensorBoard writes (metrics.jsonl gets every step)
    tensorboard: bool = True
    progress: bool = True  # tqdm bar
    max_seconds: Optional[float] = None  # stop at the first step boundary this long after the trainer started
    # (data and model setup included) and save the final model; the lr schedule is still sized by
    # optim.max_steps, so a run cut short ends above its final lr


@dataclass(frozen=True)
class TrainConfig:
    stage: Stage
    recipe: str = "project"  # named field values under the explicit keys (core/train/recipes.py)
    tokenizer: Optional[str] = None  # tokenizer directory; None = the one saved in model.init_from
    seed: int = 0  # model init, data order, masking, rollouts: everything random derives from it
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    stage3: Stage3Section = field(default_factory=Stage3Section)
    r2ft: R2FTSection = field(default_factory=R2FTSection)
    optim: OptimSection = field(default_factory=OptimSection)
    engine: EngineSection = field(default_factory=EngineSection)

    def check(self, where: str = "config") -> None:
        """Impossible combinations -> ValueError naming the key."""
        o, d, s3 = self.objective, self.data, self.stage3
        rules = [
            (not d.train_files, "data.train_files", "at least one file is needed"),
            (self.tokenizer is None and self.model.init_from is None, "tokenizer",
             "needed when model.init_from is not given"),
            (not 0 < o.min_t <= o.max_t <= 1, "objective.min_t", f"need 0 < min_t <= max_t <= 1, got {o.min_t}, {o.max_t}"),
            (d.seq_len < 2, "data.seq_len", "must be >= 2"),
            (d.pad_len < 1, "data.pad_len", "must be >= 1"),
            (not 0 <= d.random_length_prob <= 1, "data.random_length_prob", "must lie in [0, 1]"),
            (not 0 <= s3.intermediate_ratio <= 1, "stage3.intermediate_ratio", "must lie in [0, 1]"),
            (not s3.k_choices or min(s3.k_choices) < 1, "stage3.k_choices", "needs positive integers"),
            (s3.rollout_passes < 1, "stage3.rollout_passes", "must be >= 1"),
            (s3.max_diffusion_steps < 0, "stage3.max_diffusion_steps", "must be >= 0"),
            (not self.r2ft.repeat_ns or min(self.r2ft.repeat_ns) < 1, "r2ft.repeat_ns", "needs positive integers"),
            (not 0 < self.r2ft.min_suffix_frac <= 1, "r2ft.min_suffix_frac", "must lie in (0, 1]"),
            (self.optim.max_steps < 1, "optim.max_steps", "must be >= 1"),
            (self.optim.micro_batch_size < 1, "optim.micro_batch_size", "must be >= 1"),
            (self.optim.grad_accum < 1, "optim.grad_accum", "must be >= 1"),
            (self.engine.save_every < 0, "engine.save_every", "must be >= 0"),
            (self.engine.max_seconds is not None and self.engine.max_seconds <= 0, "engine.max_seconds",
             "must be > 0 (or null: no time limit)"),
            (self.model.init_from is not None and bool(set(self.model.config) - {"kernels"}), "model.config",
             "give either model.init_from or a model shape in model.config, not both (model.config.kernels "
             "alone may go with init_from)"),
            (s3.draft_loss_weight == "inverse_t" and o.t_sampling != "micro_batch", "stage3.draft_loss_weight",
             "inverse_t needs objective.t_sampling: micro_batch (one t to divide by)"),
            *range_rules("r2ft.phrase_len", self.r2ft.phrase_len, 1),
            *range_rules("r2ft.span_len", self.r2ft.span_len, 2),
            (not 0 <= self.r2ft.eos_prob <= 1, "r2ft.eos_prob", "must lie in [0, 1]"),
        ]
        for bad, key, why in rules:
            if bad:
                raise ValueError(f"{where}: {key}: {why}")


def range_rules(key: str, pair: tuple, low: int) -> list:
    """Rules for an inclusive integer range [lo, hi] with lo >= low."""
    ok = len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    return [(not ok, key, "needs two integers [lo, hi]"),
            (ok and not low <= pair[0] <= pair[1], key, f"needs {low} <= lo <= hi, got {list(pair)}")]


def _coerce(value: Any, hint: Any, file: str, key: str) -> Any:
    """Check one YAML value against a field's type hint (ints stay ints, floats accept ints)."""
    where = f"{file}: {key}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), file, key)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(hint, value, file, key + ".")
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,), dict: (dict,), tuple: (list, tuple)}
    ok = expected.get(hint)
    if ok is not None:
        if not isinstance(value, ok) or (hint in (int, float) and isinstance(value, bool)):
            raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
        if hint is float:
            return float(value)
        if hint is tuple:
            return tuple(value)
    return value


def _build(cls, raw: dict, file: str, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ValueError(f"{file}: unknown key '{prefix}{key}'; known here: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], file, prefix + k) for k, v in raw.items()}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{file}: missing required key(s) {[prefix + m for m in missing]}")
    return cls(**kwargs)


def config_from_dict(raw: dict, where: str = "config") -> TrainConfig:
    """Plain dict -> checked TrainConfig; a ``recipe`` supplies field values that explicit keys override."""
    from core.train.recipes import with_recipe

    if not isinstance(raw, dict):
        raise ValueError(f"{where}: top level must be a mapping")
    cfg = _build(TrainConfig, with_recipe(raw, where), where)
    cfg.check(where)
    return cfg


def load_config(path: str | Path, overrides: Optional[dict] = None) -> TrainConfig:
    """Read a YAML training config; ``overrides`` maps dotted keys (``engine.out_dir``) to values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training config not found")
    try:
        raw = yaml.safe_load(read_text(path)) or {}  # read_text names a non-UTF-8 file
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_from_dict(raw, str(path))


def config_to_dict(cfg: TrainConfig) -> dict:
    """JSON/YAML-ready plain dict (tuples as lists) - stored beside checkpoints."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))
