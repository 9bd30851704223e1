"""Fixtures for the ablation tests (helpers live in ablation_helpers.py: test-dir conftest names clash)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablation_helpers import save_tiny_checkpoint, single_thread


@pytest.fixture(autouse=True)
def one_torch_thread():
    with single_thread():
        yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    with single_thread():
        return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint_no_next(tmp_path_factory) -> Path:
    with single_thread():
        return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_nonext", next_token_head=False)
