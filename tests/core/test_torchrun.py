"""The process layout read from torchrun's environment, and the device each rank trains on."""

from __future__ import annotations

import pytest
import torch

from refinery.core.torchrun import ProcessLayout
from refinery.core.train.distributed import resolve_device


def test_layout_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1"), monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("LOCAL_RANK", "1")
    info = ProcessLayout.from_env()
    assert (info.rank, info.world, info.local_rank) == (1, 2, 1) and info.sharded and not info.is_main
    assert info.device("cuda") == "cuda:1" and info.device("cpu") == "cpu" and info.device("cuda:0") == "cuda:0"
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK=2 is not in \[0, WORLD_SIZE=2\)"):
        ProcessLayout.from_env()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one'"):
        ProcessLayout.from_env()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    info = ProcessLayout.from_env()
    assert info == ProcessLayout() and info.is_main and not info.sharded and info.device("cuda") == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_training_device_per_rank_without_a_gpu():
    assert resolve_device("auto", ProcessLayout(1, 2, 1)) == torch.device("cpu")
    assert resolve_device("cpu", ProcessLayout(1, 2, 1)) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"engine.device='cuda:1' but no CUDA device"):  # rank 1's own GPU
        resolve_device("cuda", ProcessLayout(1, 2, 1))
    with pytest.raises(ValueError, match=r"engine.device='cuda' but no CUDA device"):  # one process: bare cuda
        resolve_device("cuda", ProcessLayout())
