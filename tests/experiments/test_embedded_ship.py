"""Shipping a trained model: weights cast to bf16 (half the bytes), side files copied, the card kept,
and a CPU load computes in fp32 again."""

from __future__ import annotations

import json

import torch
from tiny_models import tiny_config

from refinery.core.checkpoint import load_model
from refinery.core.model import LLaDAModel
from refinery.experiments.embedded.ship import ship


def test_ship_casts_to_bf16_keeps_the_card_and_loads_as_fp32_on_cpu(tmp_path):
    torch.manual_seed(0)
    src, dst = tmp_path / "trained", tmp_path / "shipped"
    LLaDAModel(tiny_config()).save_pretrained(str(src))
    (src / "train_config.json").write_text('{"stage": "stage3"}')
    dst.mkdir()
    (dst / "README.md").write_text("model card")
    files = ship(src, dst)
    assert [f.name for f in files] == ["model.safetensors"]
    assert files[0].stat().st_size < 0.6 * (src / "model.safetensors").stat().st_size
    assert json.loads((dst / "config.json").read_text())["dtype"] == "bfloat16"
    assert (dst / "README.md").read_text() == "model card" and (dst / "train_config.json").is_file()
    shipped = load_model(dst)  # dtype None on a CPU: fp32
    assert {p.dtype for p in shipped.parameters()} == {torch.float32}
    assert {p.dtype for p in load_model(dst, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}
    trained = load_model(src)
    for (name, a), (_, b) in zip(trained.state_dict().items(), shipped.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name
