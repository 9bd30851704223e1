"""Plain helpers of the ablation tests: the smallest useful config and a YAML writer. Their fixtures (one
torch thread) are in this directory's conftest.py; the tiny checkpoints are the suite's (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import yaml


def small_config(model: Path, **overrides) -> dict:
    """2 strategies x 2 budgets x a few arith examples: the smallest config that exercises everything."""
    cfg = dict(
        name="small", model=str(model),
        tasks=[{"name": "arith", "n": 5, "split": "test", "seed": 0}],
        strategies=[{"name": "masked", "label": "masked", "params": {"remasking": "low_confidence"}},
                    {"name": "masked", "label": "masked-random", "params": {"remasking": "random"}}],
        budgets=["1/1", "1/4"], gen_length=16, batch_size=2, seeds=[0], device="cpu", score_workers=1,
    )
    cfg.update(overrides)
    return cfg


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
