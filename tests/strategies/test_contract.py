"""The contract every registered strategy keeps, checked on a tiny random model (diffusers-style common tests)."""

from __future__ import annotations

from fractions import Fraction

import math
from pathlib import Path

import pytest
import torch

from refinery.core.decode import generate
from refinery.strategies import available_strategies, get_strategy
from refinery.strategies.base import CACHE_MODES, Strategy, commit

L = 16
BUDGETS = ("1/1", "1/2", "1/4", "1/8")
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]

# Every registered strategy appears here with the variants worth covering (the test below enforces it).
VARIANTS = {
    "masked": [{}, {"remasking": "random"}, {"block_length": 4}, {"temperature": 1.0},
               {"cfg_scale": 0.5}, {"suppress_eos": True}, {"tokens_per_pass": 3},
               {"logits_eos_inf": True, "confidence_eos_eot_inf": True, "bans": "mask"}],
    "remdm": [{"schedule": s} for s in ("loop", "cap", "rescale", "conf")]
             + [{"schedule": "cap", "temperature": 1.0},
                {"schedule": "conf", "top_p": 0.9, "temperature": 1.0, "timing": "reference"}],
    "conv": [{}, {"window": 4}, {"variant": "stochastic", "top_k": 2}, {"variant": "stochastic", "temperature": 1.0},
             {"variant": "stochastic", "top_k": 2, "norm_top": "k+1"}],
    "threshold": [{}, {"threshold": 0.3, "block_length": 4}, {"threshold": 0.0},
                  {"threshold": 0.5, "block_length": 8, "inclusive": True, "allot": False}],
    "edit": [{}, {"edit_passes": 1}, {"block_length": 8}],
}
# A registered strategy not listed above runs the contract on its defaults (its presets run in
# test_presets.py), so a new strategy is held to the contract without editing this file.
NAMES = sorted(set(VARIANTS) | set(available_strategies()))
CASES = [(name, params, budget) for name in NAMES for params in VARIANTS.get(name, [{}]) for budget in BUDGETS]


def runnable(name, params, budget) -> bool:
    if name not in available_strategies():
        return False
    s = get_strategy(name, **params)
    return s.min_passes(L) <= math.ceil(Fraction(budget) * L)


def test_every_registered_strategy_is_covered_and_has_its_own_test_file():
    here = Path(__file__).parent
    for name, cls in available_strategies().items():
        assert any(case[0] == name for case in CASES), name
        assert cls.description, name
        assert (here / f"test_{name}.py").exists(), f"tests/strategies/test_{name}.py missing"


@pytest.mark.parametrize("name,params,budget", CASES, ids=lambda v: str(v))
def test_contract(tiny_model, name, params, budget):
    if not runnable(name, params, budget):
        pytest.skip("strategy not registered or budget below its minimum")
    strategy = get_strategy(name, **params)
    res = generate(tiny_model, PROMPTS, L, strategy, budget, seed=7)
    cap = math.ceil(Fraction(budget) * L)
    compact = check_decoded(tiny_model, res, cap, params)
    assert len(res.trace) <= cap
    # every recorded pass found work: sure_passes (which lets the loop skip its host check) never over-promises
    assert compact.active.any(1).all()
    # same seed, same output; also with the loop checking for finished rows before every pass
    checked = get_strategy(name, **params)
    checked.sure_passes = lambda ctx, state: 0
    again = generate(tiny_model, PROMPTS, L, checked, budget, seed=7)
    assert torch.equal(again.tokens, res.tokens) and torch.equal(again.nfe, res.nfe)
    assert len(again.trace) == len(res.trace)
    # a batch decodes exactly like its rows one at a time (left padding, per-row random streams)
    for b, p in enumerate(PROMPTS):
        one = generate(tiny_model, [p], L, get_strategy(name, **params), budget, seed=7, record_trace=False)
        n = int(res.lengths[b])
        assert int(one.lengths[0]) == n
        assert torch.equal(one.tokens[0, :n], res.tokens[b, :n]), (b, one.tokens[0], res.tokens[b])
        assert int(one.nfe[0]) == int(res.nfe[b])


PRESET_OVERRIDES = {"threshold": {"block_length": 8}}  # Fast-dLLM's blocks of 32 do not divide L = 16
PRESET_CASES = [(name, preset, budget) for name, cls in available_strategies().items() for preset in cls.presets
                for budget in ("1/1", "1/4")]


@pytest.mark.parametrize("name,preset,budget", PRESET_CASES, ids=lambda v: str(v))
def test_contract_of_every_named_preset(tiny_model, name, preset, budget):
    """The budget, the replayable trace, passes that find work, seeding and batch = rows hold for presets too
    (a preset may leave a predicted mask id in the output, as its reference does)."""
    params = PRESET_OVERRIDES.get(name, {})
    need = get_strategy(name, preset=preset, **params).min_passes(L)  # e.g. edit's project preset: 1 + 4 passes
    if Fraction(budget) * L < need:
        budget = f"{need}/{L}"  # the lowest budget the preset runs at, instead of skipping the case
    res = generate(tiny_model, PROMPTS, L, get_strategy(name, preset=preset, **params), budget, seed=7)
    assert (res.nfe <= res.max_nfe).all() and (res.nfe >= 1).all(), res.nfe
    compact = res.trace.compact()
    assert (compact.replay() == res.tokens.numpy()).all()
    assert (compact.active.sum(0) == res.nfe.numpy()).all() and compact.active.any(1).all()
    again = generate(tiny_model, PROMPTS, L, get_strategy(name, preset=preset, **params), budget, seed=7)
    assert torch.equal(again.tokens, res.tokens)
    for b, p in enumerate(PROMPTS):
        one = generate(tiny_model, [p], L, get_strategy(name, preset=preset, **params), budget, seed=7,
                       record_trace=False)
        n = int(res.lengths[b])
        assert torch.equal(one.tokens[0, :n], res.tokens[b, :n]) and int(one.nfe[0]) == int(res.nfe[b])


CACHE_CASES = [(name, params, mode)
               for name in NAMES for params in VARIANTS.get(name, [{}]) for mode in CACHE_MODES[1:]]


@pytest.mark.parametrize("name,params,mode", CACHE_CASES, ids=lambda v: str(v))
def test_cache_mode_supported_or_refused(tiny_model, name, params, mode):
    """Every strategy either decodes on each cache mode within the contract, or refuses it before any pass
    with a ValueError naming the strategy and the mode (never a silent fallback to no cache)."""
    if not runnable(name, params, "1/2"):
        pytest.skip("strategy not registered or budget below its minimum")
    strategy = get_strategy(name, **params)
    assert "none" in strategy.cache_modes and strategy.refuse_cache("none") is None
    reason = strategy.refuse_cache(mode)
    if reason is not None:
        calls = []
        hook = tiny_model.register_forward_hook(lambda *a: calls.append(1))
        try:
            with pytest.raises(ValueError, match=f"strategy '{name}' cannot decode with cache='{mode}': .+"):
                generate(tiny_model, PROMPTS, L, strategy, "1/2", cache=mode)
        finally:
            hook.remove()
        assert not calls
        return
    res = generate(tiny_model, PROMPTS, L, strategy, "1/2", seed=7, cache=mode)
    compact = check_decoded(tiny_model, res, math.ceil(L / 2), params)
    assert compact.cache[0] == "refresh" and set(compact.cache) <= {"refresh", mode}
    again = generate(tiny_model, PROMPTS, L, get_strategy(name, **params), "1/2", seed=7, cache=mode)
    assert torch.equal(again.tokens, res.tokens) and torch.equal(again.nfe, res.nfe)


def test_right_padded_tensor_prompts_equal_ragged_lists(tiny_model):
    ids = torch.full((len(PROMPTS), 7), 0)
    attn = torch.zeros_like(ids)
    for b, p in enumerate(PROMPTS):
        ids[b, : len(p)], attn[b, : len(p)] = torch.tensor(p), 1
    a = generate(tiny_model, (ids, attn), L, "masked", "1/4", record_trace=False)
    b = generate(tiny_model, PROMPTS, L, "masked", "1/4", record_trace=False)
    assert torch.equal(a.tokens, b.tokens)


class _Rogue(Strategy):
    """Writes into the prompt: the loop must refuse the result."""

    def step(self, ctx, state, out):
        state.x[:, 0] = 3
        return commit(ctx, state, state.x[:, ctx.prompt_width:] == ctx.mask_id, out.logits.argmax(-1))


class _Greedy(Strategy):
    """Never finishes: the loop must stop it at the budget."""

    def step(self, ctx, state, out):
        return commit(ctx, state, torch.zeros_like(state.x[:, ctx.prompt_width:], dtype=torch.bool),
                      out.logits.argmax(-1))


def test_loop_refuses_prompt_edits_and_budget_overruns(tiny_model):
    with pytest.raises(RuntimeError, match="prompt"):
        generate(tiny_model, PROMPTS, L, _Rogue(), "1/4")
    with pytest.raises(RuntimeError, match="more than 4 passes"):
        generate(tiny_model, PROMPTS, L, _Greedy(), "1/4")


def test_budget_below_minimum_and_bad_budgets_are_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="needs at least 4"):
        generate(tiny_model, PROMPTS, L, get_strategy("masked", block_length=4), "1/8")
    with pytest.raises(ValueError, match="must divide"):
        generate(tiny_model, PROMPTS, L, get_strategy("masked", block_length=5), "1/1")
    for bad in ("0", "3/2", "half"):
        with pytest.raises(ValueError, match="budget"):
            generate(tiny_model, PROMPTS, L, "masked", bad)


def test_unknown_strategy_suggests_close_names():
    with pytest.raises(KeyError, match=r"Unknown strategy 'maskd'\. Did you mean 'masked'\?.*Available: .*remdm"):
        get_strategy("maskd")
    with pytest.raises(ValueError, match="unknown parameter"):
        get_strategy("masked", blocklength=4)
    with pytest.raises(ValueError, match="temperature: expected a number"):
        get_strategy("masked", temperature="hot")


def check_decoded(model, res, cap: int, params: dict):
    """What every decode must satisfy -> its compact trace: at least one and at most ``cap`` passes per row,
    no mask left, a trace that replays to the final tokens, and NFE per row = the passes it was active in
    (2 per pass under classifier-free guidance)."""
    assert (res.nfe <= cap).all() and (res.nfe >= 1).all(), res.nfe
    mask = model.config.mask_token_id
    for b in range(len(PROMPTS)):
        assert (res.tokens[b, : res.lengths[b]] != mask).all()
    compact = res.trace.compact()
    assert (compact.replay() == res.tokens.numpy()).all()
    assert (compact.active.sum(0) * (2 if params.get("cfg_scale") else 1) == res.nfe.numpy()).all()
    return compact
