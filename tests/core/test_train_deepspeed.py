"""The DeepSpeed path, run for real in one CPU process (gloo): ZeRO-2 and ZeRO-3 reproduce the plain
loop's losses, save checkpoints that load in a plain process, and resume through DeepSpeed's checkpoint."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

HERE = Path(__file__).resolve().parent

SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import _train_helpers as H
from refinery.core.train.config import load_config
from refinery.core.train.engine import Trainer
from refinery.core.model import LLaDAModel
root = Path(sys.argv[2])
ws = H.make_workspace(root)
base = {"engine.precision": "fp32", "optim.max_steps": 6, "engine.save_every": 3, "optim.grad_accum": 2,
        "optim.micro_batch_size": 4}
def run(name, steps=6, resume=False, **extra):
    over = H.tiny_overrides(ws, "sft", root / name, **{**base, "optim.max_steps": steps, **extra})
    Trainer(load_config(H.TINY / "tiny_sft.yaml", over)).train(resume=resume)
    return [m["loss"] for m in H.read_metrics(root / name)]
out = {"plain": run("plain", 8)}
for z in ("zero2", "zero3"):
    out[z] = run(z, 8, **{"engine.deepspeed": str(H.REPO / "experiments" / "deepspeed" / f"{z}.json")})
    m = LLaDAModel.from_pretrained(str(root / z / "checkpoints" / "step-000006"), local_files_only=True)
    out[z + "_params"] = sum(p.numel() for p in m.parameters())
# the last checkpoint is step 6 (save_every 3): a resumed run replays steps 7-8 from DeepSpeed's state
out["zero2_resumed"] = run("zero2", 8, resume=True,
                          **{"engine.deepspeed": str(H.REPO / "experiments" / "deepspeed" / "zero2.json")})
out["plain_params"] = sum(p.numel() for p in LLaDAModel.from_pretrained(str(root / "plain")).parameters())
print("RESULT" + json.dumps(out))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deepspeed_zero2_zero3_single_process_cpu(tmp_path):
    import os

    env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(HERE), str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=HERE.parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    plain = res["plain"]
    for z in ("zero2", "zero3"):
        assert res[z] == pytest.approx(plain, rel=1e-4)
        assert res[z + "_params"] == res["plain_params"]
    # resumed from step 6 through DeepSpeed's checkpoint: steps 7-8 continue the same trajectory
    assert len(res["zero2_resumed"]) == 8 and res["zero2_resumed"][:6] == res["zero2"][:6]
    assert res["zero2_resumed"] == pytest.approx(plain, rel=1e-4)


def test_stage3_under_zero3_is_refused(tmp_path):
    from refinery.core.train.config import load_config
    from refinery.core.train.distributed import deepspeed_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"stage: stage3\ntokenizer: t\ndata: {{train_files: [a]}}\n"
                   f"engine: {{deepspeed: {HERE.parents[1] / 'experiments/deepspeed/zero3.json'}}}\n")
    with pytest.raises(ValueError, match="ZeRO-1/2"):
        deepspeed_config(load_config(cfg), "c.yaml")
