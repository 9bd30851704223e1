"""Fixtures of the core tests."""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture
def made_dirs(monkeypatch) -> list[str]:
    """The temporary directories the sandbox harness creates during the test (to check they are gone)."""
    import refinery.core.sandbox

    made, mkdtemp = [], tempfile.mkdtemp

    def recording(*args, **kwargs):
        path = mkdtemp(*args, **kwargs)
        if os.path.basename(path).startswith("refinery-sbx-"):
            made.append(path)
        return path

    monkeypatch.setattr(refinery.core.sandbox.tempfile, "mkdtemp", recording)
    return made
