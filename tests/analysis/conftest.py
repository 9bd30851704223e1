"""Fixtures of the analysis tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis_helpers import make_run


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A fresh copy of the hand-made run of analysis_helpers (rows.jsonl + one edit trace)."""
    return make_run(tmp_path / "run")
