"""Hand-built cases for ReMDM remasking."""

from __future__ import annotations

import pytest
import torch

from refinery.core.decode import generate
from refinery.strategies import get_strategy


def test_t_off_must_be_below_t_on():
    with pytest.raises(ValueError, match="t_off=0.6 must be < t_on=0.55"):
        get_strategy("remdm", schedule="loop", t_off=0.6).config.check(16, 16)
    get_strategy("remdm", schedule="cap", t_off=0.6).config.check(16, 16)  # only the loop uses them


def test_loop_alpha_schedule_is_piecewise_linear_and_continuous():
    s = get_strategy("remdm", schedule="loop", t_on=0.5, t_off=0.1, alpha_on=0.8)
    assert s.alpha(1.0) == pytest.approx(0.0)
    assert s.alpha(0.5) == pytest.approx(0.8) and s.alpha(0.5 + 1e-9) == pytest.approx(0.8, abs=1e-6)
    assert s.alpha(0.3) == pytest.approx(0.8)
    assert s.alpha(0.1) == pytest.approx(0.8) and s.alpha(0.05) == pytest.approx(0.9) and s.alpha(0.0) == 1.0
    assert get_strategy("remdm", schedule="cap").alpha(0.25) == pytest.approx(0.75)


def test_sigma_schedules():
    psi = torch.tensor([[0.9, 0.1, 0.5, 0.0]])
    decoded = torch.tensor([[True, True, True, False]])
    a_t, a_s = 0.5, 0.75  # sigma_max = 0.25 / 0.5 = 0.5
    cap = get_strategy("remdm", schedule="cap", eta=0.1).sigma(0.5, a_t, a_s, decoded, psi)
    assert torch.allclose(cap, torch.full_like(psi, 0.1))
    capped = get_strategy("remdm", schedule="cap", eta=0.9).sigma(0.5, a_t, a_s, decoded, psi)
    assert torch.allclose(capped, torch.full_like(psi, 0.5))
    rescale = get_strategy("remdm", schedule="rescale", eta=0.5).sigma(0.5, a_t, a_s, decoded, psi)
    assert torch.allclose(rescale, torch.full_like(psi, 0.25))
    conf = get_strategy("remdm", schedule="conf").sigma(0.5, a_t, a_s, decoded, psi)
    expect = torch.softmax(-psi[0, :3], 0) * 0.5
    assert torch.allclose(conf[0, :3], expect) and conf[0, 3] == 0 and conf[0, 1] > conf[0, 2] > conf[0, 0]


def test_loop_remasks_only_inside_its_window(tiny_model):
    S = 20
    s = get_strategy("remdm", schedule="loop", eta=0.5, t_on=0.6, t_off=0.2)
    res = generate(tiny_model, [[5, 6, 7]] * 4, S, s, "1/1", seed=3)
    remasked = {int(p) for p in res.trace.compact().events["remasked"][:, 0]}
    window = {i for i in range(S) if 0.2 < 1 - i / S <= 0.6}
    assert remasked and remasked <= window
    assert (res.nfe == S).all()


def test_no_remasking_when_eta_is_zero(tiny_model):
    res = generate(tiny_model, [[5, 6, 7]], 16, get_strategy("remdm", schedule="cap", eta=0.0), "1/2")
    assert len(res.trace.compact().events["remasked"]) == 0
