"""Building the model and tokenizer a training run starts from (the YAML ``model`` section)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Optional

from refinery.core.train.config import TrainConfig

log = logging.getLogger(__name__)


def build_tokenizer(cfg: TrainConfig, where: str):
    from refinery.core.tokenizer import load_tokenizer

    path = cfg.tokenizer if cfg.tokenizer is not None else cfg.model.init_from
    try:
        return load_tokenizer(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: tokenizer: {path} is not a tokenizer directory") from None


def special_ids(config) -> dict:
    """The special token ids the objectives need, read off the model config (never hard-coded)."""
    return {k: getattr(config, k, None) for k in ("mask_token_id", "eos_token_id", "pad_token_id", "eot_token_id",
                                                  "delete_token_id", "bos_token_id")}


def _check_tokenizer_matches(config, tokenizer, where: str) -> None:
    from refinery.core.tokenizer import special_token_ids

    tok_ids = special_token_ids(tokenizer).as_config_kwargs()
    for key in ("mask_token_id", "eos_token_id", "eot_token_id", "delete_token_id"):
        if getattr(config, key, None) != tok_ids[key]:
            raise ValueError(f"{where}: tokenizer: {key} is {tok_ids[key]} in the tokenizer but "
                             f"{getattr(config, key, None)} in the model config")
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"{where}: tokenizer has {len(tokenizer)} tokens, the model only {config.vocab_size}")


def build_model(cfg: TrainConfig, tokenizer, where: str, resume_dir: Optional[Path] = None):
    """A fresh LLaDAModel (shape from ``model.config``, vocabulary and special ids from the tokenizer), the
    previous stage's ``init_from``, or - when resuming - the checkpoint's weights. Then the next-token head
    is attached if asked for and missing. Weights stay fp32 (autocast / DeepSpeed handle bf16)."""
    from refinery.core.model import LLaDAConfig, LLaDAModel
    from refinery.core.tokenizer import special_token_ids

    source = resume_dir if resume_dir is not None else cfg.model.init_from
    if source is not None:
        if not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"{where}: model.init_from: {source} has no config.json")
        model = LLaDAModel.from_pretrained(str(source), local_files_only=True, use_safetensors=True)
        model = model.float()
    else:
        shape = dict(cfg.model.config)
        known = set(inspect.signature(LLaDAConfig.__init__).parameters) - {"self", "kwargs"}
        for key in shape:
            if key not in known:
                raise ValueError(f"{where}: unknown key 'model.config.{key}'; known: {sorted(known)}")
        shape.setdefault("vocab_size", len(tokenizer))
        try:
            config = LLaDAConfig(**{**special_token_ids(tokenizer).as_config_kwargs(), **shape})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: model.config: {e}") from None
        model = LLaDAModel(config)
    _check_tokenizer_matches(model.config, tokenizer, where)
    kernels = cfg.model.config.get("kernels")
    if kernels is not None and kernels != model.config.kernels:  # a saved model loads eager: apply the run's choice
        try:
            model.set_kernels(kernels)
        except ValueError as e:
            raise ValueError(f"{where}: model.config.kernels: {e}") from None
    if model.config.kernels != "eager":
        log.info("training kernels: %s", model.config.kernels)
    mode = cfg.model.add_next_token_head
    if mode != "none" and model.next_token_head is None:
        model.add_next_token_head(copy_output_head=(mode == "copy"))
        log.info("attached the next-token head (%s)", mode)
    if cfg.stage == "stage3":
        if model.next_token_head is None:
            raise ValueError(f"{where}: stage3 needs the next-token head: set model.add_next_token_head")
        if model.config.delete_token_id is None:
            raise ValueError(f"{where}: stage3 needs a delete token (<|del|>) in the tokenizer/model config")
    n = sum(p.numel() for p in model.parameters())
    log.info("model: %.1fM parameters", n / 1e6)
    return model
