"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint directory ``<out>/checkpoints/step-000120/`` holds
  config.json + model*.safetensors   the model (``save_pretrained``), loadable on its own
  tokenizer files                    so the directory is self-contained
  optimizer.safetensors              every tensor of the optimiser state, keyed ``state.<param>.<name>``
  rng.safetensors                    torch CPU/CUDA RNG states and the trainer's data generator (uint8)
  trainer_state.json                 step, data position, scheduler, optimiser scalars, python/numpy RNG
Under DeepSpeed the optimiser is partitioned across ranks; its state is then written by DeepSpeed's own
checkpointing into ``deepspeed/`` (a pickle-based format: resume only from runs you made yourself).

Directories are written under a temporary name and renamed, so a killed run never leaves a checkpoint
that looks complete but is not.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def flatten_optimizer(state_dict: dict) -> tuple[dict, dict]:
    """torch optimiser state_dict -> (tensors {key: tensor}, JSON-able meta)."""
    tensors, scalars = {}, {}
    for pid, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state(gen: torch.Generator) -> tuple[dict, dict]:
    """(tensors, JSON) of every RNG a training step may touch."""
    tensors = {"torch_cpu": torch.get_rng_state(), "data_generator": gen.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(words), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def restore_rng(tensors: dict, meta: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    gen.set_state(tensors["data_generator"])
    cuda_keys = sorted((k for k in tensors if k.startswith("torch_cuda_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, words, gauss = meta["python"]
    random.setstate((version, tuple(words), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_model_dir(path: Path, model, tokenizer, max_shard_size: str, state_dict: Optional[dict] = None) -> None:
    """Model (safetensors shards) + tokenizer: a directory ``LLaDAModel.from_pretrained`` and
    ``load_tokenizer`` both read."""
    model.save_pretrained(str(path), state_dict=state_dict, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(str(path))


def save_checkpoint(path: Path, *, model, tokenizer, optimizer, scheduler, gen: torch.Generator, state: dict,
                    max_shard_size: str, model_state_dict: Optional[dict] = None) -> None:
    """Write a complete single-process checkpoint atomically (see the module docstring for the layout)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model_dir(tmp, model, tokenizer, max_shard_size, model_state_dict)
    state = dict(state)
    if optimizer is not None:
        tensors, meta = flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state["optimizer"] = meta
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()  # LambdaLR stores its functions as None: JSON-safe
    rng_tensors, state["rng"] = rng_state(gen)
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, optimizer, scheduler, gen: torch.Generator) -> dict:
    """Restore optimiser, scheduler and RNGs from ``path`` (the model is loaded separately); returns the state."""
    state = json.loads((path / STATE_FILE).read_text())
    if optimizer is not None and "optimizer" in state:
        tensors = load_file(str(path / "optimizer.safetensors"))
        optimizer.load_state_dict(unflatten_optimizer(tensors, state["optimizer"]))
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    restore_rng(load_file(str(path / "rng.safetensors")), state["rng"], gen)
    return state


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def latest_checkpoint(root: Path) -> Optional[Path]:
    """Newest complete checkpoint under ``root`` (only renamed, finished directories count)."""
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def prune_checkpoints(root: Path, keep: int) -> None:
    found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))
    for _, p in found[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
