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
model). A bad key or value raises ``ConfigError`` (a ValueError) naming the file and the dotted key, before
anything is built; types, ranges and choices are checked by :mod:`core.typed` from the field declarations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from refinery.core.errors import ConfigError, read_text
from refinery.core.typed import build, ranged

Stage = Literal["pretrain", "sft", "stage3", "r2ft"]
POSITIVE_INTS = {"range": (1, None), "min_len": 1}  # a non-empty list of integers >= 1


@dataclass(frozen=True)
class ModelSection:
    init_from: Optional[str] = None  # checkpoint directory of the previous stage; None = fresh model
    # LLaDAConfig kwargs for a fresh model (vocab size and special ids come from the tokenizer)
    config: dict = field(default_factory=dict)
    add_next_token_head: Literal["none", "copy", "fresh"] = "none"  # attach the ME-DLM head if missing
    gradient_checkpointing: bool = False  # recompute block activations in backward (memory for compute)


@dataclass(frozen=True)
class DataSection:
    train_files: tuple = ()  # JSONL files; pretrain: {"text"}; other stages: {"history", "response"}
    seq_len: int = ranged(512, 2)  # pretrain: packed chunk length; chat stages: longest prompt + padded response
    pad_len: int = ranged(32, 1)  # responses (+<|eot_id|>) are padded with eos to a multiple of this
    random_length_prob: float = ranged(0.0, 0, 1)  # pretrain: share of batches cropped to a random length (LLaDA: 0.01)
    shuffle: bool = True  # reshuffle every epoch (seeded)


@dataclass(frozen=True)
class ObjectiveSection:
    min_t: float = 1e-3  # t ~ U(min_t, max_t): per-sequence masking probability
    max_t: float = 1.0
    # divide the 1/t-weighted sum by all (response) tokens or by the masked ones
    normalize: Literal["tokens", "masked"] = "tokens"
    next_head_weight: float = 1.0  # weight of the next-token head's loss (when the model has the head)
    t_sampling: Literal["sequence", "micro_batch"] = "sequence"  # one t per row (LLaDA) or per micro-batch (ME-DLM)
    # chat stages: may the first response token be masked? True is the project's gap-0 fix (the next-token head
    # at the last prompt position then learns what opens the answer); ME-DLM keeps that token visible.
    mask_first_response_token: bool = True


@dataclass(frozen=True)
class Stage3Section:
    intermediate_ratio: float = ranged(0.5, 0, 1)  # probability that a step trains on the model's own drafts
    # tokens committed per rollout pass, sampled per step
    k_choices: tuple[int, ...] = field(default=(2, 4, 8, 16), metadata=POSITIVE_INTS)
    rollout_passes: int = ranged(2, 1)  # forward passes a rollout may spend (the cost bound: see core/train/stage3.py)
    max_diffusion_steps: int = ranged(0, 0)  # edit passes applied to drafts at the end of the curriculum
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
    # the loser tiles the last n context tokens, n sampled from here
    repeat_ns: tuple[int, ...] = field(default=(1, 2, 3, 4), metadata=POSITIVE_INTS)
    # the masked suffix covers a fraction U(min_suffix_frac, 1) of the response
    min_suffix_frac: float = ranged(0.1, 0, 1, open="lo")
    lp_reduction: Literal["mean", "sum", "length"] = "mean"  # log-prob of a suffix: per-token mean or sum;
    # length: winner summed over its masked tokens / response length, loser / span length (the Conv repo)
    rejected: Literal["suffix_tile", "phrase_span"] = "suffix_tile"  # how the loser is built (core/train/r2ft.py)
    # phrase_span: repeated phrase length, inclusive range [lo, hi]
    phrase_len: tuple[int, int] = field(default=(1, 14), metadata={"range": (1, None)})
    # phrase_span: length of the span the phrase is repeated over, inclusive range [lo, hi]
    span_len: tuple[int, int] = field(default=(30, 49), metadata={"range": (2, None)})
    eos_prob: float = ranged(1.0, 0, 1)  # phrase_span: probability that one eos is written into the span
    batch_reduction: Literal["mean", "sum"] = "mean"  # per-row losses averaged or summed over the micro-batch
    ban_mask_logit: bool = False  # drop the mask id from the softmax (the Conv repo's SUBS parameterisation)


@dataclass(frozen=True)
class OptimSection:
    lr: float = 1e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 0  # linear warmup from 0
    max_steps: int = ranged(1000, 1)  # optimiser steps
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max grad norm; 0 = off
    micro_batch_size: int = ranged(4, 1)  # sequences per forward pass (per process)
    grad_accum: int = ranged(1, 1)  # micro-batches per optimiser step


@dataclass(frozen=True)
class EngineSection:
    out_dir: str = "runs/train"  # final model + tokenizer; checkpoints/ and metrics.jsonl inside
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast on GPU (DeepSpeed: its bf16 mode)
    deepspeed: Optional[str] = None  # DeepSpeed JSON (experiments/deepspeed/zero*.json); needed for >1 process
    save_every: int = ranged(100, 0)  # optimiser steps between checkpoints (0 = only the final save)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    max_shard_size: str = "16MB"  # safetensors shard size of saved models
    log_every: int = 1  # steps between TensorBoard writes (metrics.jsonl gets every step)
    tensorboard: bool = True
    progress: bool = True  # tqdm bar
    # stop at the first step boundary this long after the trainer started (data and model setup included) and
    # save the final model; the lr schedule is still sized by optim.max_steps, so a cut run ends above its final lr
    max_seconds: Optional[float] = ranged(None, 0, open="lo")


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
        """Impossible combinations -> ConfigError naming the key (single-field ranges live in the field
        metadata and are checked by core.typed when the config is built)."""
        o, d, s3 = self.objective, self.data, self.stage3
        rules = [
            (not d.train_files, "data.train_files", "at least one file is needed"),
            (self.tokenizer is None and self.model.init_from is None, "tokenizer",
             "needed when model.init_from is not given"),
            (not 0 < o.min_t <= o.max_t <= 1, "objective.min_t",
             f"need 0 < min_t <= max_t <= 1, got {o.min_t}, {o.max_t}"),
            (self.model.init_from is not None and bool(set(self.model.config) - {"kernels"}), "model.config",
             "give either model.init_from or a model shape in model.config, not both (model.config.kernels "
             "alone may go with init_from)"),
            (s3.draft_loss_weight == "inverse_t" and o.t_sampling != "micro_batch", "stage3.draft_loss_weight",
             "inverse_t needs objective.t_sampling: micro_batch (one t to divide by)"),
            *((pair[0] > pair[1], f"r2ft.{name}", f"needs lo <= hi, got {list(pair)}")
              for name, pair in (("phrase_len", self.r2ft.phrase_len), ("span_len", self.r2ft.span_len))),
        ]
        for bad, key, why in rules:
            if bad:
                raise ConfigError(where, key, why)


def config_from_dict(raw: dict, where: str = "config") -> TrainConfig:
    """Plain dict -> checked TrainConfig; a ``recipe`` supplies field values that explicit keys override."""
    from refinery.core.train.recipes import with_recipe

    if not isinstance(raw, dict):
        raise ConfigError(where, "", "top level must be a mapping")
    cfg = build(TrainConfig, with_recipe(raw, where), where)
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
