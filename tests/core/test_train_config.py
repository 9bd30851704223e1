"""Training configs: YAML -> frozen dataclasses, errors that name the file and key; DeepSpeed JSONs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refinery.core.train.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[2]
YAMLS = sorted((REPO / "experiments" / "train").glob("*.yaml"))
ZERO = sorted((REPO / "experiments" / "deepspeed").glob("zero*.json"))


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_shipped_yamls_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig) and cfg.stage in ("pretrain", "sft", "stage3", "r2ft")


def test_shipped_yamls_cover_every_stage():
    stages = {load_config(p).stage for p in YAMLS}
    assert stages == {"pretrain", "sft", "stage3", "r2ft"}


@pytest.mark.parametrize("text,error", [
    ("stage: sft\ntokenizer: t\ndata: {train_files: [a], seqlen: 4}\n", "data.seqlen: unknown key"),
    ("stage: sft\ntokenizer: t\nlearning_rate: 1\ndata: {train_files: [a]}\n", "learning_rate: unknown key"),
    ("stage: sft\ntokenizer: t\ndata: {train_files: [a]}\noptim: {lr: 1.0e-3, max_stepz: 3}\n",
     "optim.max_stepz: unknown key"),
    ("stage: sft\ntokenizer: t\ndata: {train_files: [a], seq_len: long}\n", "data.seq_len: expected an integer"),
    # an unknown stage is caught by the recipe check first, which lists the stages
    ("stage: finetune\ntokenizer: t\ndata: {train_files: [a]}\n", "recipe: 'project' is a recipe for stage(s)"),
    ("stage: sft\ntokenizer: t\ndata: {train_files: [a]}\nobjective: {min_t: 0.5, max_t: 0.1}\n",
     "objective.min_t: need 0 < min_t <= max_t <= 1"),
    ("stage: sft\ndata: {train_files: [a]}\n", "tokenizer: needed"),
    ("stage: sft\ntokenizer: t\ndata: {train_files: []}\n", "data.train_files: at least one file"),
    ("stage: sft\ntokenizer: t\ndata: {train_files: [a]}\noptim: {micro_batch_size: true}\n",
     "optim.micro_batch_size: expected an integer"),
])
def test_bad_keys_and_values_name_file_key_and_reason(tmp_path, text, error):
    p = write(tmp_path, text)
    with pytest.raises(ValueError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: {error}")  # file: dotted key: reason (core.typed)


def test_overrides_and_types(tmp_path):
    p = write(tmp_path, "stage: pretrain\ntokenizer: t\ndata: {train_files: [a]}\noptim: {lr: 1}\n")
    cfg = load_config(p, {"optim.max_steps": 7, "engine.out_dir": "x"})
    assert cfg.optim.max_steps == 7 and cfg.engine.out_dir == "x"
    assert isinstance(cfg.optim.lr, float) and cfg.data.train_files == ("a",)


def test_unknown_model_config_key(tmp_path):
    from refinery.core.train.model_setup import build_model

    cfg = load_config(write(tmp_path, "stage: sft\ntokenizer: t\ndata: {train_files: [a]}\n"
                                      "model: {config: {d_modle: 8}}\n"))
    with pytest.raises(ValueError, match="model.config.d_modle"):
        build_model(cfg, tokenizer=["x"] * 10, where="cfg.yaml")


@pytest.mark.parametrize("path", ZERO, ids=lambda p: p.name)
def test_deepspeed_jsons_build_a_valid_engine_config(tmp_path, path):
    """The shipped ZeRO JSONs, filled from the YAML, pass DeepSpeed's own (strict, pydantic) validation."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from refinery.core.train.distributed import deepspeed_config

    cfg = load_config(write(tmp_path, f"stage: sft\ntokenizer: t\ndata: {{train_files: [a]}}\n"
                                      f"optim: {{micro_batch_size: 3, grad_accum: 2, grad_clip: 0.5}}\n"
                                      f"engine: {{deepspeed: {path}, precision: bf16}}\n"))
    ds = deepspeed_config(cfg, "cfg.yaml")
    parsed = DeepSpeedConfig(ds)
    assert parsed.zero_optimization_stage == int(path.stem[-1])
    assert parsed.train_micro_batch_size_per_gpu == 3 and parsed.gradient_accumulation_steps == 2
    assert parsed.gradient_clipping == 0.5 and parsed.bfloat16_config.enabled


def test_deepspeed_conflicting_value_is_refused(tmp_path):
    from refinery.core.train.distributed import deepspeed_config

    bad = tmp_path / "z.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 2}}))
    cfg = load_config(write(tmp_path, f"stage: sft\ntokenizer: t\ndata: {{train_files: [a]}}\n"
                                      f"optim: {{micro_batch_size: 3}}\nengine: {{deepspeed: {bad}}}\n"))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu"):
        deepspeed_config(cfg, "cfg.yaml")


def test_init_from_takes_kernels_but_no_shape(tmp_path):
    head = "stage: sft\ntokenizer: t\ndata: {train_files: [a]}\n"
    cfg = load_config(write(tmp_path, head + "model: {init_from: ckpt, config: {kernels: liger}}\n"))
    assert cfg.model.init_from == "ckpt" and cfg.model.config == {"kernels": "liger"}
    p = write(tmp_path, head + "model: {init_from: ckpt, config: {kernels: liger, d_model: 8}}\n")
    with pytest.raises(ValueError, match="model.config"):
        load_config(p)
