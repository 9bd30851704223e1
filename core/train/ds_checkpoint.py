"""Checkpoints of a DeepSpeed run (several processes, partitioned optimiser state).

Layout as in :mod:`core.train.checkpoint`, except that the optimiser/scheduler state is DeepSpeed's own
checkpoint in ``deepspeed/`` (every rank writes its partition) and each rank has its RNG file
``rng-rank<r>.safetensors``. The model weights are gathered (ZeRO-3) and written by rank 0 with
``save_pretrained``, so the directory loads in one process like any other checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from refinery.core.train import checkpoint as ckpt
from refinery.core.train.distributed import barrier, gathered_state_dict


def save_deepspeed_checkpoint(trainer, path: Path) -> None:
    info, engine = trainer.info, trainer.engine
    tmp = path.with_name(path.name + ".tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    engine.save_checkpoint(str(tmp / "deepspeed"), tag="state")  # collective
    sd = gathered_state_dict(engine)  # collective under ZeRO-3
    tensors, rng_meta = ckpt.rng_state(trainer.gen)
    save_file(tensors, str(tmp / f"rng-rank{info.rank}.safetensors"))
    (tmp / f"rng-rank{info.rank}.json").write_text(json.dumps(rng_meta))
    barrier(info)
    if info.is_main:
        ckpt.save_model_dir(tmp, trainer.model, trainer.tokenizer, trainer.cfg.engine.max_shard_size, sd)
        (tmp / ckpt.STATE_FILE).write_text(json.dumps(trainer._state(), indent=1))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    barrier(info)


def load_deepspeed_checkpoint(trainer, path: Path) -> dict:
    info = trainer.info
    trainer.engine.load_checkpoint(str(path / "deepspeed"), tag="state")
    rank_file = path / f"rng-rank{info.rank}.safetensors"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{path}: no RNG state for rank {info.rank} (saved with fewer processes?)")
    meta = json.loads((path / f"rng-rank{info.rank}.json").read_text())
    ckpt.restore_rng(load_file(str(rank_file)), meta, trainer.gen)
    return json.loads((path / ckpt.STATE_FILE).read_text())
