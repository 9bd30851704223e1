"""Fixtures for the analysis tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis_helpers import make_run


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "run")
