"""Fixtures of the ablation tests. ``one_torch_thread`` is opt-in per module (``pytestmark``): the modules that
run many tiny-model decodes use it; the others keep torch's default thread count."""

from __future__ import annotations

import pytest

from tiny_models import single_thread


@pytest.fixture
def one_torch_thread():
    with single_thread():
        yield
