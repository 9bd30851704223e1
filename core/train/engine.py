"""The training loop shared by every stage: build, step, log, checkpoint, resume.

    trainer = Trainer(load_config("experiments/train/tiny_sft.yaml"))
    trainer.train(resume=True)

One optimiser step = ``grad_accum`` micro-batches of ``micro_batch_size`` rows per process. The stage's
objective (a table, :data:`OBJECTIVES`) turns a batch into a loss; the loop owns everything else. All
training randomness (masking, crops, rollout choices) comes from one CPU ``torch.Generator`` seeded
from ``seed`` and the rank, saved with each checkpoint, so a resumed run replays the same losses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

import torch

from refinery.core.torchrun import ProcessLayout
from refinery.core.train import checkpoint as ckpt
from refinery.core.train.config import TrainConfig, config_to_dict
from refinery.core.train.data import EpochSampler, collate_chat, encode_chat, load_records, pack_texts, to_device
from refinery.core.train.distributed import (all_reduce_mean, barrier, deepspeed_config, gathered_state_dict,
                                             init_deepspeed, init_process_group_if_needed, resolve_device)
from refinery.core.train.model_setup import build_model, build_tokenizer, special_ids
from refinery.core.train.objectives import PretrainObjective, SFTObjective
from refinery.core.train.r2ft import R2FTObjective
from refinery.core.train.stage3 import Stage3Objective

log = logging.getLogger(__name__)

OBJECTIVES = {"pretrain": PretrainObjective, "sft": SFTObjective, "stage3": Stage3Objective, "r2ft": R2FTObjective}
METRICS_FILE = "metrics.jsonl"


def cosine_with_warmup(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``min_ratio`` at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms and other 1-D parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # One fused kernel instead of the foreach passes (about 15 ms a step at 1B): with the fused training
    # kernels only, so eager runs keep their exact optimiser arithmetic.
    fused = decay[0].is_cuda and getattr(model.config, "kernels", "eager") != "eager" if decay else False
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused or None)


def accumulate(total, value, accum: int):
    """``total + value / accum`` with the arithmetic of Python floats (float64), where ``value`` (a float or a
    0-dim tensor) may stay on its device: the logged numbers equal ``float(value) / accum`` summed on the host,
    bit for bit, without reading the device now."""
    if isinstance(value, torch.Tensor):
        return total + value.detach().to(torch.float64) / accum
    return total + float(value) / accum


def read_floats(values: dict) -> dict:
    """{name: float or 0-dim tensor} -> {name: float}, with one device-to-host read per device holding any."""
    read: dict = {}
    for dev in {v.device for v in values.values() if isinstance(v, torch.Tensor)}:
        keys = [k for k, v in values.items() if isinstance(v, torch.Tensor) and v.device == dev]
        # the step's one sync: the GPU has the whole step queued by now
        read.update(zip(keys, torch.stack([values[k].detach().to(torch.float64) for k in keys]).tolist()))
    return {k: read.get(k, v) for k, v in values.items()}


class Trainer:
    def __init__(self, cfg: TrainConfig, where: str = "config"):
        self.cfg, self.where = cfg, where
        self.started = time.monotonic()  # engine.max_seconds counts from here: data and model setup included
        self.info = ProcessLayout.from_env()
        self.use_ds = cfg.engine.deepspeed is not None
        init_process_group_if_needed(self.info, self.use_ds, where)
        self.device = resolve_device(cfg.engine.device, self.info)
        self.out = Path(cfg.engine.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        if not (cfg.engine.progress and self.info.is_main):
            import transformers

            transformers.utils.logging.disable_progress_bar()
        self.tokenizer = build_tokenizer(cfg, where)
        # Validate and read the data before building anything heavy: bad lines fail fast.
        self.records = load_records(cfg.data.train_files, OBJECTIVES[cfg.stage].kind,
                                    progress=cfg.engine.progress and self.info.is_main)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.info.rank)
        self.step = 0

    def _prepare(self, model_dir: Optional[Path]) -> None:
        """Model (fresh, init_from, or a checkpoint to resume), data arrays, optimiser, schedule, engine."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, self.tokenizer, self.where, resume_dir=model_dir)
        self.special = special_ids(model.config)
        self.objective = OBJECTIVES[cfg.stage](cfg, self.special)
        if self.objective.kind == "pretrain":
            self.items = pack_texts(self.records, self.tokenizer, cfg.data.seq_len, self.special["eos_token_id"])
        else:
            self.items = encode_chat(self.records, self.tokenizer, cfg.data.seq_len, cfg.data.pad_len,
                                     self.special["eot_token_id"])
        self.sampler = EpochSampler(len(self.items), cfg.seed, cfg.data.shuffle)
        model.to(self.device).train()
        if cfg.model.gradient_checkpointing:
            model.enable_checkpointing()
        self.model = model
        self.optimizer = build_optimizer(model, cfg)
        o = cfg.optim
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(o.warmup_steps, o.max_steps, o.min_lr_ratio))
        self.engine = None
        if self.use_ds:
            ds_cfg = deepspeed_config(cfg, self.where)
            self.engine, self.optimizer, self.scheduler = init_deepspeed(model, self.optimizer, self.scheduler, ds_cfg)

    # ----------------------------------------------------------------------------------------- batches
    def _next_batch(self):
        """This process's slice of the next global micro-batch (every rank draws the same indices), copied to the
        device through pinned memory without blocking; a chat batch keeps its CPU original (``batch.host``)."""
        mbs, info = self.cfg.optim.micro_batch_size, self.info
        idx = self.sampler.take(mbs * info.world)[info.rank * mbs:(info.rank + 1) * mbs]
        if self.objective.kind == "pretrain":
            return to_device(torch.from_numpy(self.items[idx]), self.device)
        d = self.cfg.data
        batch = collate_chat([self.items[i] for i in idx], d.pad_len, d.seq_len, self.special["eos_token_id"])
        return batch.to(self.device)

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.engine.precision == "bf16" and not self.use_ds:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----------------------------------------------------------------------------------------- step
    def train_step(self) -> dict:
        """One optimiser step; returns the logged metrics (averaged over micro-batches and ranks).

        Device-side values (the loss, the objective's tensor metrics, the gradient norm) stay on the device
        until the step's work is queued, then come back in one read: a ``.item()`` per value would make the
        host wait for the GPU in the middle of the step, and the GPU wait for the host after it."""
        cfg, accum = self.cfg, self.cfg.optim.grad_accum
        forward_model = self.engine if self.engine is not None else self.model
        sums: dict = {}
        tokens = 0
        for _ in range(accum):
            batch = self._next_batch()
            with self._autocast():
                out = self.objective.loss(forward_model, batch, self.gen, self.step)
            if self.engine is not None:
                self.engine.backward(out.loss)  # DeepSpeed divides by grad_accum itself
                self.engine.step()
            else:
                (out.loss / accum).backward()
            tokens += out.tokens
            for k, v in {"loss": out.loss, **out.metrics}.items():
                sums[k] = accumulate(sums.get(k, 0.0), v, accum)
        if self.engine is None:
            if cfg.optim.grad_clip > 0:
                sums["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        metrics = all_reduce_mean(read_floats(sums), self.info, self.device)
        metrics["tokens"] = tokens * self.info.world
        return metrics

    # ----------------------------------------------------------------------------------------- loop
    def train(self, resume: bool = False) -> Path:
        """Run to ``optim.max_steps``; returns the output directory (final model + tokenizer)."""
        start = ckpt.latest_checkpoint(self.ckpt_root) if resume else None
        if resume and start is None:
            log.warning("%s: --resume but no checkpoint under %s; starting from scratch", self.where, self.ckpt_root)
        self._prepare(start)
        if start is not None:
            self._restore(start)
        self._open_logs(truncate_after=self.step)
        bar = self._progress_bar()
        deadline = None if self.cfg.engine.max_seconds is None else self.started + self.cfg.engine.max_seconds
        try:
            while self.step < self.cfg.optim.max_steps and not self._past(deadline):
                t0 = time.perf_counter()
                metrics = self.train_step()
                self.step += 1
                self._log(metrics, time.perf_counter() - t0)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                every = self.cfg.engine.save_every
                if every and self.step % every == 0:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            self._close_logs()
        self.save_final()
        return self.out

    def _past(self, deadline: float | None) -> bool:
        """Whether engine.max_seconds is spent; once any rank is past it, every rank stops at the same step."""
        if deadline is None:
            return False
        late = {"late": float(time.monotonic() >= deadline)}
        if self.info.world > 1:
            late = all_reduce_mean(late, self.info, self.device)  # any rank late -> mean > 0 -> all stop
        if late["late"] > 0:
            log.warning("%s: engine.max_seconds (%s s) reached after %d of %d steps; saving the final model",
                        self.where, self.cfg.engine.max_seconds, self.step, self.cfg.optim.max_steps)
            return True
        return False

    def _progress_bar(self):
        if not (self.cfg.engine.progress and self.info.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.optim.max_steps, initial=self.step, desc=f"train {self.cfg.stage}", unit="step")

    # ----------------------------------------------------------------------------------------- logging
    def _open_logs(self, truncate_after: int) -> None:
        self.metrics_f, self.tb = None, None
        if not self.info.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / METRICS_FILE
        kept = []
        if path.exists():  # a killed run may have logged steps past its last checkpoint: drop them
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("step", 0) <= truncate_after:
                    kept.append(line)
        path.write_text("".join(k + "\n" for k in kept))
        self.metrics_f = path.open("a")
        if self.cfg.engine.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=truncate_after + 1)

    def _log(self, metrics: dict, seconds: float) -> None:
        if self.metrics_f is None:
            return
        rec = {"step": self.step, **metrics, "lr": self.scheduler.get_last_lr()[0], "seconds": seconds,
               "tokens_per_s": metrics["tokens"] / max(seconds, 1e-9)}
        self.metrics_f.write(json.dumps(rec) + "\n")
        self.metrics_f.flush()
        if self.tb is not None and self.step % self.cfg.engine.log_every == 0:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, self.step)

    def _close_logs(self) -> None:
        if self.metrics_f is not None:
            self.metrics_f.close()
        if self.tb is not None:
            self.tb.close()

    # ----------------------------------------------------------------------------------------- saving
    def _state(self) -> dict:
        return {"step": self.step, "sampler": self.sampler.state_dict(), "stage": self.cfg.stage,
                "world_size": self.info.world, "config": config_to_dict(self.cfg)}

    def save_checkpoint(self) -> Path:
        path = ckpt.step_dir(self.ckpt_root, self.step)
        if self.engine is None:
            ckpt.save_checkpoint(path, model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
                                 scheduler=self.scheduler, gen=self.gen, state=self._state(),
                                 max_shard_size=self.cfg.engine.max_shard_size)
        else:
            from refinery.core.train.ds_checkpoint import save_deepspeed_checkpoint

            save_deepspeed_checkpoint(self, path)
        if self.info.is_main:
            ckpt.prune_checkpoints(self.ckpt_root, self.cfg.engine.keep_checkpoints)
        barrier(self.info)
        log.info("saved checkpoint %s", path)
        return path

    def _restore(self, path: Path) -> None:
        if self.engine is None:
            state = ckpt.load_checkpoint(path, optimizer=self.optimizer, scheduler=self.scheduler, gen=self.gen)
        else:
            from refinery.core.train.ds_checkpoint import load_deepspeed_checkpoint

            state = load_deepspeed_checkpoint(self, path)
        if state.get("world_size", 1) != self.info.world:
            raise ValueError(f"{path}: saved with {state['world_size']} processes, resuming with {self.info.world}")
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)

    def save_final(self) -> None:
        """Final model + tokenizer + the config, at the top of ``out_dir`` (the next stage's init_from)."""
        sd = gathered_state_dict(self.engine) if self.engine is not None else None
        if self.info.is_main:
            ckpt.save_model_dir(self.out, self.model, self.tokenizer, self.cfg.engine.max_shard_size, sd)
            (self.out / "train_config.json").write_text(json.dumps(config_to_dict(self.cfg), indent=1))
        barrier(self.info)
