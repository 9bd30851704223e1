"""Checkpoints: no pickle, self-contained, and a SIGKILLed run resumed with --resume replays the same losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from refinery.core.train import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_helpers as H  # noqa: E402

DETERMINISTIC = ("loss", "loss_cur", "loss_next", "lr", "grad_norm", "tokens", "draft_step", "mask_frac")


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW([{"params": [model[0].weight], "weight_decay": 0.1},
                             {"params": [model[0].bias, *model[1].parameters()], "weight_decay": 0.0}],
                            betas=(0.8, 0.9))
    for _ in range(3):
        model(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    tensors, meta = ckpt.flatten_optimizer(opt.state_dict())
    save_file(tensors, str(tmp_path / "o.safetensors"))
    meta = json.loads(json.dumps(meta))
    back = ckpt.unflatten_optimizer(load_file(str(tmp_path / "o.safetensors")), meta)
    ref = opt.state_dict()
    assert back["param_groups"] == ref["param_groups"]
    for pid, entry in ref["state"].items():
        for name, value in entry.items():
            assert torch.equal(back["state"][pid][name], value)


def test_rng_states_round_trip():
    import random

    import numpy as np

    gen = torch.Generator().manual_seed(5)
    tensors, meta = ckpt.rng_state(gen)
    meta = json.loads(json.dumps(meta))
    want = (torch.rand(3), torch.rand(3, generator=gen), random.random(), np.random.rand())
    torch.manual_seed(99), gen.manual_seed(99), random.seed(99), np.random.seed(99)
    ckpt.restore_rng(tensors, meta, gen)
    got = (torch.rand(3), torch.rand(3, generator=gen), random.random(), np.random.rand())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2:] == want[2:]


def run_cli(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "refinery", "train", str(cfg), "--out", str(out), "--no-progress",
                             *extra], cwd=H.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def lines(out: Path) -> int:
    p = out / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


@pytest.fixture(scope="module")
def stage3_cfg(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    ws = H.make_workspace(root)
    text = ((H.TINY / "tiny_stage3.yaml").read_text().replace("runs/tiny/tokenizer", str(ws["tokenizer"]))
            .replace("runs/tiny/sft.jsonl", str(ws["sft"])).replace("max_steps: 40", "max_steps: 60")
            .replace("save_every: 20", "save_every: 5"))
    cfg = root / "stage3.yaml"
    cfg.write_text(text)
    return cfg


def test_sigkill_then_resume_replays_the_same_losses(stage3_cfg, tmp_path):
    """Stage 3 exercises every random stream: masking, the draft/masked coin, k, rollout seeds, data order."""
    from refinery.core.train.config import load_config
    from refinery.core.train.engine import Trainer

    killed = tmp_path / "killed"
    proc = run_cli(stage3_cfg, killed)
    deadline = time.time() + 240
    while lines(killed) < 12 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_killed = lines(killed)
    assert 12 <= n_killed < 60
    last = ckpt.latest_checkpoint(killed / "checkpoints")
    assert last is not None and int(last.name.split("-")[1]) <= n_killed

    resumed = run_cli(stage3_cfg, killed, "--resume")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err

    straight = tmp_path / "straight"
    Trainer(load_config(stage3_cfg, {"engine.out_dir": str(straight), "engine.progress": False})).train()
    a, b = H.read_metrics(killed), H.read_metrics(straight)
    assert [r["step"] for r in a] == list(range(1, 61)) == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in DETERMINISTIC:
            if key in rb:
                assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    # the final weights agree too
    from safetensors.torch import load_file

    wa, wb = load_file(str(killed / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_checkpoint_dir_is_self_contained_and_pickle_free(stage3_cfg, tmp_path):
    from refinery.core.model import LLaDAModel
    from refinery.core.tokenizer import load_tokenizer
    from refinery.core.train.config import load_config
    from refinery.core.train.engine import Trainer

    out = tmp_path / "run"
    cfg = load_config(stage3_cfg, {"engine.out_dir": str(out), "engine.progress": False, "optim.max_steps": 10,
                                   "engine.max_shard_size": "20KB", "engine.keep_checkpoints": 1,
                                   "engine.tensorboard": True})
    Trainer(cfg).train()
    dirs = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert dirs == ["step-000010"]  # step 5 pruned, no leftover .tmp
    for d in (out / "checkpoints" / "step-000010", out):
        files = {p.name for p in d.iterdir()}
        assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
        assert sum(f.startswith("model-") and f.endswith(".safetensors") for f in files) > 1  # sharded
        model = LLaDAModel.from_pretrained(str(d), local_files_only=True)
        tok = load_tokenizer(d)
        assert model.next_token_head is not None
        assert model.config.mask_token_id == tok.convert_tokens_to_ids("<|mdm_mask|>")
    state = json.loads((out / "checkpoints" / "step-000010" / ckpt.STATE_FILE).read_text())
    assert state["step"] == 10 and state["stage"] == "stage3"
    assert any((out / "tensorboard").iterdir())
    # the next stage starts from the output directory
    nxt = load_config(stage3_cfg, {"engine.out_dir": str(tmp_path / "next"), "engine.progress": False,
                                   "optim.max_steps": 1, "engine.save_every": 0, "model.init_from": str(out),
                                   "model.config": {}, "tokenizer": None})
    Trainer(nxt).train()
    assert (tmp_path / "next" / "config.json").is_file()


def test_max_seconds_stops_early_and_still_saves_the_final_model(stage3_cfg, tmp_path, monkeypatch):
    """engine.max_seconds cuts a run at a step boundary; the steps run are logged and the model is saved."""
    from refinery.core.train import engine as engine_mod
    from refinery.core.train.config import load_config
    from refinery.core.train.engine import Trainer

    clock = iter(range(10_000))  # a fake monotonic clock: one second per reading, so the cut is deterministic
    monkeypatch.setattr(engine_mod.time, "monotonic", lambda: float(next(clock)))
    out = tmp_path / "cut"
    cfg = load_config(stage3_cfg, {"engine.out_dir": str(out), "engine.progress": False, "engine.max_seconds": 3.5,
                                   "engine.save_every": 0})
    trainer = Trainer(cfg)
    trainer.train()
    assert 0 < trainer.step < cfg.optim.max_steps
    assert [r["step"] for r in H.read_metrics(out)] == list(range(1, trainer.step + 1))
    assert (out / "model.safetensors").is_file()


def test_max_seconds_must_be_positive(stage3_cfg):
    from refinery.core.train.config import load_config

    with pytest.raises(ValueError, match="engine.max_seconds"):
        load_config(stage3_cfg, {"engine.max_seconds": 0})
