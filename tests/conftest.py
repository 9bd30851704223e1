"""Fixtures shared by every test directory: a tiny random LLaDA model, a scripted model with hand-set logits
and tiny saved checkpoints (with and without the next-token head). Their plain building blocks (ids,
configs, builders) are in tiny_models.py; each test directory's own fixtures are in its conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from refinery.core.model import LLaDAModel
from tiny_models import ScriptedModel, save_tiny_checkpoint, single_thread, tiny_config


@pytest.fixture(scope="session")
def tiny_model() -> LLaDAModel:
    torch.manual_seed(1234)
    model = LLaDAModel(tiny_config()).eval()
    with torch.no_grad():  # sharpen the heads so confidences spread out and EOS / delete actually occur
        model.lm_head.weight.mul_(40)
        model.next_token_head.weight.mul_(40)
    return model


@pytest.fixture
def scripted():
    return ScriptedModel


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved random 2-layer checkpoint with its tokenizer and the next-token head (so that ``edit`` runs)."""
    with single_thread():
        return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint_no_next(tmp_path_factory) -> Path:
    with single_thread():
        return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_nonext", next_token_head=False)
