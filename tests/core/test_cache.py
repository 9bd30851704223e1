"""KV-cached decoding: what is exact (and tested equal) and what is the Fast-dLLM approximation.

Exact: a pass on a cache filled from the same canvas gives the uncached logits; the layer-0 keys and
values of a column depend on that column's token and position alone, so a one-layer model decodes
token for token the same with and without a cache. Approximate: from layer 1 on, a cached column's
keys and values depend on every other column (bidirectional attention), so they go stale while the
window's tokens change; the last test shows that this staleness is real on a two-layer model (the
accuracy table in the report measures what it costs).
"""

from __future__ import annotations

import pytest
import torch

from tiny_models import tiny_config
from refinery.core.decode import generate
from refinery.core.model import KVCache, LLaDAModel
from refinery.core.trace import CompactTrace
from refinery.strategies import get_strategy

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]


def _model(n_layers: int, **kw) -> LLaDAModel:
    torch.manual_seed(99)
    model = LLaDAModel(tiny_config(n_layers=n_layers, **kw)).eval()
    with torch.no_grad():  # sharp heads, as in the shared fixture: confidences spread, EOS and delete occur
        model.lm_head.weight.mul_(40)
        model.next_token_head.weight.mul_(40)
    return model


def _canvas(B: int = 3, P: int = 7, L: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded canvas with some masked region positions: ids (B, P+L), attention mask (B, P+L)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(3, 60, (B, P + L), generator=g)
    x[:, P::3] = 63  # masks
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, :3] = False  # a shorter prompt
    mask[2, P + L - 2:] = False  # a shorter region (as after an edit phase's strip)
    return x, mask


@pytest.mark.parametrize("n_kv_heads", [4, 2])
@torch.no_grad()
def test_pass_on_a_fresh_cache_gives_the_uncached_logits(n_kv_heads):
    model = _model(2, n_kv_heads=n_kv_heads)
    x, mask = _canvas()
    P = 7
    full = model(x, attention_mask=mask, use_cache=True, logits_from=P - 1)
    cache = full.kv_cache
    assert isinstance(cache, KVCache) and cache.width == x.shape[1] and len(cache.keys) == 2
    prefix = model(x[:, P - 1:], attention_mask=mask, kv_cache=cache, cache_start=P - 1)  # prefix: window to end
    torch.testing.assert_close(prefix.logits, full.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prefix.next_logits, full.next_logits, rtol=1e-5, atol=1e-5)
    lo, hi = P + 4, P + 8  # dual: one block of four columns
    dual = model(x[:, lo:hi], attention_mask=mask, kv_cache=cache, cache_start=lo)
    torch.testing.assert_close(dual.logits, full.logits[:, lo - (P - 1):hi - (P - 1)], rtol=1e-5, atol=1e-5)
    dense = model(x, use_cache=True)  # no attention mask: positions are the columns
    again = model(x[:, lo:hi], kv_cache=dense.kv_cache, cache_start=lo)
    torch.testing.assert_close(again.logits, dense.logits[:, lo:hi], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_layer0_keys_of_the_prompt_never_depend_on_the_region_but_deeper_ones_do():
    model = _model(2)
    x, mask = _canvas()
    y = x.clone()
    y[:, 7:] = torch.randint(3, 60, y[:, 7:].shape, generator=torch.Generator().manual_seed(5))  # another region
    a = model(x, attention_mask=mask, use_cache=True).kv_cache
    b = model(y, attention_mask=mask, use_cache=True).kv_cache
    torch.testing.assert_close(a.keys[0][:, :, :7], b.keys[0][:, :, :7], rtol=0, atol=0)
    torch.testing.assert_close(a.values[0][:, :, :7], b.values[0][:, :, :7], rtol=0, atol=0)
    assert (a.keys[1][:, :, :7] - b.keys[1][:, :, :7]).abs().max() > 1e-3  # bidirectional: layer 1 sees the region


def test_model_rejects_a_cache_call_that_does_not_fit():
    model = _model(1)
    x, mask = _canvas()
    cache = model(x, attention_mask=mask, use_cache=True).kv_cache
    with pytest.raises(ValueError, match="attention_mask covers the whole canvas"):
        model(x[:, 7:], attention_mask=mask[:, 7:], kv_cache=cache, cache_start=7)
    with pytest.raises(ValueError, match="exceed the cache's width"):
        model(x[:, 7:], attention_mask=mask, kv_cache=cache, cache_start=9)
    with pytest.raises(ValueError, match="batch"):
        model(x[:1, 7:], attention_mask=mask[:1], kv_cache=cache, cache_start=7)


EXACT_CASES = [
    ("masked", {}, "prefix"),
    ("masked", {"block_length": 4}, "prefix"),
    ("masked", {"block_length": 4}, "dual"),
    ("masked", {"block_length": 8, "cfg_scale": 0.5}, "dual"),
    ("masked", {"block_length": 4, "remasking": "random"}, "dual"),
    ("threshold", {"threshold": 0.999, "block_length": 4}, "prefix"),
    ("threshold", {"threshold": 0.999, "block_length": 4}, "dual"),
    ("edit", {"block_length": 8}, "dual"),
    ("edit", {}, "prefix"),
    ("remdm", {"schedule": "cap", "eta": 0.3}, "prefix"),
    ("conv", {}, "prefix"),
]


@pytest.mark.parametrize("name,params,mode", EXACT_CASES, ids=str)
def test_one_layer_model_decodes_identically_with_a_cache(name, params, mode):
    model = _model(1)
    ref = generate(model, PROMPTS, 16, get_strategy(name, **params), "1/2", seed=4)
    got = generate(model, PROMPTS, 16, get_strategy(name, **params), "1/2", seed=4, cache=mode)
    assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.lengths, ref.lengths)
    assert torch.equal(got.nfe, ref.nfe)  # NFE is charged as without a cache
    kinds = [r.cache for r in got.trace.records]
    assert kinds[0] == "refresh" and set(kinds) == {"refresh", mode}  # some passes really ran on the cache
    assert {r.cache for r in ref.trace.records} == {""}


def test_trace_says_which_passes_ran_on_the_cache(tmp_path):
    model = _model(2)
    res = generate(model, PROMPTS, 16, get_strategy("masked", block_length=4), "1/1", cache="dual")
    assert [r.cache for r in res.trace.records] == ["refresh", "dual", "dual", "dual"] * 4  # refilled per block
    compact = res.trace.compact()
    compact.save(tmp_path / "t.npz")
    loaded = CompactTrace.load(tmp_path / "t.npz")
    assert loaded.cache.tolist() == ["refresh", "dual", "dual", "dual"] * 4
    assert (loaded.replay() == res.tokens.numpy()).all()
    edit = generate(model, PROMPTS, 16, get_strategy("edit", block_length=8, edit_passes=2), "1/2", cache="prefix")
    # mask phase: 6 passes over two blocks, each opened by a full pass; the edit phase refills once more
    assert [r.cache for r in edit.trace.records] == ["refresh", "prefix", "prefix"] * 2 + ["refresh", "prefix"]
    assert [r.phase for r in edit.trace.records][-2:] == ["edit", "edit"]


def test_unknown_cache_mode_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cache 'full' unknown; choose one of \['none', 'prefix', 'dual'\]"):
        generate(_model(1), PROMPTS, 16, "masked", "1/2", cache="full")


@torch.no_grad()
def test_two_layer_cache_is_an_approximation():
    """The stale cached columns change a deeper model's logits (the reason one-layer models are the exact case)."""
    model = _model(2)
    x, mask = _canvas()
    stale = model(x, attention_mask=mask, use_cache=True).kv_cache  # filled before the region changed
    y = x.clone()
    y[:, 7::3] = 20  # the masks get committed
    fresh = model(y, attention_mask=mask, logits_from=7).logits
    cached = model(y[:, 7:], attention_mask=mask, kv_cache=stale, cache_start=7).logits
    assert (cached - fresh).abs().max() > 1e-4
    one = _model(1)
    stale1 = one(x, attention_mask=mask, use_cache=True).kv_cache
    torch.testing.assert_close(one(y[:, 7:], attention_mask=mask, kv_cache=stale1, cache_start=7).logits,
                               one(y, attention_mask=mask, logits_from=7).logits, rtol=1e-5, atol=1e-5)


def _ablation(**top) -> dict:
    return dict(tasks=["arith"], budgets=["1/2"], gen_length=16, batch_size=4, **top,
                strategies=[{"name": "masked", "params": {"block_length": 8}},
                            {"name": "masked", "label": "masked@dual", "cache": "dual", "params": {"block_length": 8}}])


def test_ablation_config_cache_keys():
    from refinery.experiments.config import config_from_dict, validate

    config = config_from_dict(_ablation(), source="c.yaml")
    assert [config.cache_for(s) for s in config.strategies] == ["none", "dual"]
    assert "cache" not in config.to_dict() and "cache" not in config.to_dict()["strategies"][0]
    assert config.to_dict()["strategies"][1]["cache"] == "dual"
    assert config_from_dict(_ablation(cache="prefix")).cache_for(config.strategies[0]) == "prefix"
    validate(config)


def test_ablation_config_cache_mistakes_name_the_key():
    from refinery.experiments.config import ConfigError, config_from_dict, validate

    with pytest.raises(ConfigError, match=r"c\.yaml: cache: 'full' is not a cache mode"):
        config_from_dict(_ablation(cache="full"), source="c.yaml")
    bad = _ablation()
    bad["strategies"][1] = {"name": "remdm", "cache": "dual"}
    with pytest.raises(ConfigError, match=r"c\.yaml: strategies\[1\]\.cache: strategy 'remdm' cannot decode with "
                                          r"cache='dual': re-masking"):
        validate(config_from_dict(bad, source="c.yaml"))


def test_a_trace_saved_before_caching_existed_loads_as_uncached(tmp_path):
    import numpy as np

    res = generate(_model(1), PROMPTS, 16, "masked", "1/2", cache="prefix")
    res.trace.compact().save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as z:
        old = {k: z[k] for k in z.files if k != "cache"}
    np.savez_compressed(tmp_path / "old.npz", **old)
    assert CompactTrace.load(tmp_path / "old.npz").cache.tolist() == [""] * 8
    assert CompactTrace.load(tmp_path / "new.npz").cache.tolist() == ["refresh"] + ["prefix"] * 7
