"""Process layout and the DeepSpeed path.

``refinery train`` runs as one process on CPU or one GPU, or as N processes launched by ``torchrun``
or the ``deepspeed`` launcher. Both launchers set WORLD_SIZE / RANK / LOCAL_RANK; several processes
require a DeepSpeed JSON (``engine.deepspeed``: experiments/deepspeed/zero{1,2,3}.json), whose
batch-size, clipping and bf16 entries are filled in from the YAML so the two never disagree.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from refinery.core.torchrun import ProcessLayout
from refinery.core.train.config import TrainConfig

log = logging.getLogger(__name__)


def resolve_device(name: str, info: ProcessLayout) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK when a GPU is visible, else cpu."""
    if name == "auto":
        name = f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    else:
        name = info.device(name)
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"engine.device={name!r} but no CUDA device is visible")
        torch.cuda.set_device(device)
    return device


def deepspeed_config(cfg: TrainConfig, where: str) -> dict:
    """Read ``engine.deepspeed`` and fill in what the YAML owns. Conflicting explicit values -> ValueError."""
    path = Path(cfg.engine.deepspeed)
    try:
        ds = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: engine.deepspeed: {path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    stage = ds.get("zero_optimization", {}).get("stage")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"{path}: zero_optimization.stage must be 0-3, got {stage!r}")
    if stage == 3 and cfg.stage == "stage3":
        # Rollouts stop early and per rank; ZeRO-3 gathers parameters collectively in every forward, so
        # ranks running different numbers of rollout passes would deadlock.
        raise ValueError(f"{path}: stage3 training needs ZeRO-1/2 (rollouts are not collective-safe under ZeRO-3)")
    owned = {
        "train_micro_batch_size_per_gpu": cfg.optim.micro_batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
    }
    for key, value in owned.items():
        if ds.get(key, "auto") not in ("auto", value):
            raise ValueError(f"{path}: {key}={ds[key]!r} conflicts with the YAML ({value!r}); use \"auto\"")
        ds[key] = value
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    bf16 = cfg.engine.precision == "bf16"
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    if ds.get("fp16", {}).get("enabled"):
        raise ValueError(f"{path}: fp16 is not supported (use engine.precision: bf16)")
    if "optimizer" in ds or "scheduler" in ds:
        raise ValueError(f"{path}: optimizer/scheduler come from the YAML (optim section); remove them here")
    return ds


def init_deepspeed(model, optimizer, scheduler, ds_config: dict):
    """Wrap model + optimiser + scheduler in a DeepSpeed engine (the scheduler steps inside engine.step())."""
    import deepspeed

    deepspeed.init_distributed()
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config)
    return engine, optimizer, scheduler


def init_process_group_if_needed(info: ProcessLayout, use_deepspeed: bool, where: str) -> None:
    if info.world > 1 and not use_deepspeed:
        raise ValueError(f"{where}: {info.world} processes need engine.deepspeed (a ZeRO JSON config)")


def all_reduce_mean(values: dict, info: ProcessLayout, device: torch.device) -> dict:
    """Average logged floats over ranks (only for logging; gradients are reduced by DeepSpeed)."""
    if info.world == 1 or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return {k: v / info.world for k, v in zip(keys, t.tolist())}


def barrier(info: ProcessLayout) -> None:
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def gathered_state_dict(engine) -> Optional[dict]:
    """Full model weights for saving. ZeRO-3 partitions parameters, so every rank must join the gather;
    with ZeRO-1/2 each rank holds full weights and ``None`` means 'use the module's own state_dict'."""
    if engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return None
