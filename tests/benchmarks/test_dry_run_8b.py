"""The 8B dry-run script at toy size (``--tiny``): random source in LLaDA's layout -> convert -> ablate."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from safetensors import safe_open

_spec = importlib.util.spec_from_file_location("dry_run_8b", Path(__file__).with_name("dry_run_8b.py"))
dry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dry)


def test_the_8b_layout_is_8b():
    assert dry.n_params(dry.LLADA_8B) == pytest.approx(8.02e9, rel=0.01)


def test_tiny_dry_run_writes_converts_and_times_every_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fig = dry.main(["--tiny", "--work", str(tmp_path)])
    source = sorted((tmp_path / "source").glob("*.safetensors"))
    assert [p.name for p in source] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    keys = set()
    for p in source:
        with safe_open(str(p), "pt") as f:
            keys |= set(f.keys())
    cfg = json.loads((tmp_path / "source" / "config.json").read_text())
    assert "model.transformer.blocks.1.ff_proj.weight" in keys and "model.transformer.ff_out.weight" in keys
    assert sum(1 for k in keys) == 2 * 9 + 3 and cfg["model_type"] == "llada"
    entries = fig["seconds_per_problem"]
    plain = {k for k in entries if "+" not in k}
    assert len(plain) == 9 and "edit" in plain and all(v > 0 for v in entries.values())
    cached = {k.split("+")[0]: k.split("+")[1] for k in entries if "+" in k}  # each cache-capable entry, best mode
    assert cached["masked-semiar16"] == "dual" and cached["masked"] == "prefix" and cached["conv"] == "prefix"
    assert not any(k.startswith("remdm") for k in cached) and set(cached) <= plain
    assert set(fig["problems"].values()) == {2} and fig["peak_gpu_gib"] is None and fig["load_seconds"] > 0
    text = (tmp_path / "dry_run.md").read_text()
    assert "ESTIMATE" in text and "| edit |" in text
    assert json.loads((tmp_path / "dry_run.json").read_text())["convert_seconds"] == fig["convert_seconds"]


def test_gpu_hour_estimate_scales_with_budgets_and_gpus():
    # 2 entries at 1 s/problem at 1/8; budgets sum to 15/8, i.e. 15x the 1/8 cost; 6 x 100 problems
    hours = dry.gpu_hours({"a": 1.0, "b": 1.0}, "1/8", 100, 1)
    assert hours == pytest.approx(2 * 15 * 6 * 100 / 3600)
    assert dry.gpu_hours({"a": 1.0, "b": 1.0}, "1/8", 100, 8) == pytest.approx(hours / 8)
