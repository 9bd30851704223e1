"""Fixtures of the app tests: the app's tiny checkpoint, it loaded, and a headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from app_helpers import make_checkpoint

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def app_checkpoint(tmp_path_factory) -> Path:
    """The app tests' own tiny checkpoint (readable random output; the suite's tiny_checkpoint is not)."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture(scope="session")
def tiny_pair(app_checkpoint):
    from refinery.core.checkpoint import load_model_and_tokenizer

    return load_model_and_tokenizer(str(app_checkpoint))


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing and we are root; fails loudly otherwise."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"{CHROMIUM} is missing and cannot be installed here (need root and apt-get): "
                    "run `apt-get install -y chromium`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} does not exist")
    return CHROMIUM

