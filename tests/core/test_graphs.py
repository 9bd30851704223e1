"""CUDA-graph replay of the forward (core.graphs) as far as a CPU can check it.

On a CPU the graph path is never taken: ``graphs='on'`` falls back to the eager forward and logs why. The
runner's plumbing (static input buffers, the static KV cache refilled in place, window columns given as
tensors, outputs rewritten by each replay) is tested here by replacing the CUDA capture with
:func:`core.graphs.call_again`, which re-runs the forward on the static buffers at every "replay": a
buffer the runner forgot to refresh gives wrong tokens. The GPU check that real graphs give the eager
tokens is ``tests/benchmarks/gpu_decode.py --graphs both``.
"""

from __future__ import annotations

import logging

import pytest
import torch

from tiny_models import tiny_config
from refinery.core import graphs
from refinery.core.decode import generate
from refinery.core.model import KVCache, LLaDAModel
from refinery.strategies import get_strategy

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]


def _model(n_layers: int = 2) -> LLaDAModel:
    torch.manual_seed(7)
    model = LLaDAModel(tiny_config(n_layers=n_layers)).eval()
    with torch.no_grad():  # sharp heads: confidences spread, EOS and delete occur
        model.lm_head.weight.mul_(40)
        model.next_token_head.weight.mul_(40)
    return model


def test_cpu_falls_back_to_eager_and_says_why(caplog):
    model = _model()
    off = generate(model, PROMPTS, 16, "masked", "1/2", graphs="off")
    with caplog.at_level(logging.WARNING, logger="refinery.core.decode"):
        on = generate(model, PROMPTS, 16, "masked", "1/2", graphs="on")
    assert "graphs='on': the forward runs eager: the model is on the cpu: CUDA graphs need a CUDA device" in caplog.text
    assert on.graph_passes == 0 and torch.equal(on.tokens, off.tokens)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="refinery.core.decode"):
        auto = generate(model, PROMPTS, 16, "masked", "1/2")  # the default, "auto": eager on a CPU, silently
    assert auto.graph_passes == 0 and caplog.text == "" and torch.equal(auto.tokens, off.tokens)
    with pytest.raises(ValueError, match=r"graphs 'always' unknown; choose one of \['auto', 'on', 'off'\]"):
        generate(model, PROMPTS, 16, "masked", "1/2", graphs="always")


def test_auto_leaves_large_batches_eager():
    model = _model()
    assert graphs.graph_fallback_reason(model, 1, "auto").startswith("the model is on the cpu")
    # only the device of the first parameter matters to the decision
    fake = type("M", (), {"parameters": lambda self: iter([type("P", (), {"device": torch.device("cuda")})()])})()
    assert graphs.graph_fallback_reason(fake, graphs.AUTO_MAX_ROWS, "auto") is None
    assert "a batch of 5 rows" in graphs.graph_fallback_reason(fake, graphs.AUTO_MAX_ROWS + 1, "auto")
    assert graphs.graph_fallback_reason(fake, 32, "on") is None
    assert graphs.graph_fallback_reason(fake, 1, "off") == "graphs='off'"
    assert "cache='prefix' needs one graph per block width" in graphs.graph_fallback_reason(fake, 1, "auto", "prefix")
    assert graphs.graph_fallback_reason(fake, 1, "on", "prefix") is None
    assert graphs.graph_fallback_reason(fake, 1, "auto", "dual") is None


@torch.no_grad()
def test_static_cache_refills_in_place_and_gives_the_eager_logits_exactly():
    model = _model()
    g = torch.Generator().manual_seed(3)
    x = torch.randint(3, 60, (2, 14), generator=g)
    y = torch.randint(3, 60, (2, 14), generator=g)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, :2] = False
    static = KVCache(static=True)
    for canvas in (x, y):  # the second fill rewrites the same tensors
        ref = model(canvas, attention_mask=mask, use_cache=True, logits_from=5)
        got = model(canvas, attention_mask=mask, use_cache=True, kv_cache=static, logits_from=5)
        assert torch.equal(got.logits, ref.logits) and torch.equal(got.next_logits, ref.next_logits)
        assert got.kv_cache is static and all(torch.equal(a, b) for a, b in zip(static.keys, ref.kv_cache.keys))
        if canvas is x:
            first = [k.data_ptr() for k in static.keys]
            assert [k.stride() for k in static.keys] == [k.stride() for k in ref.kv_cache.keys]  # eager layout
    assert [k.data_ptr() for k in static.keys] == first
    # a window named by an index tensor (and explicit positions) = the same window named by cache_start
    eager = model(y[:, 8:12], attention_mask=mask, kv_cache=ref.kv_cache, cache_start=8).logits
    static.index = torch.arange(8, 12)
    pos = LLaDAModel._positions(y[:, 8:12], mask, 8)
    got = model(y[:, 8:12], attention_mask=mask, position_ids=pos, kv_cache=static, cache_start=0).logits
    assert torch.equal(got, eager)
    with pytest.raises(ValueError, match=r"a refill covers the cache's whole canvas \(2, 14\)"):
        model(y[:, :10], use_cache=True, kv_cache=static)


@pytest.mark.parametrize("padded,max_graphs", [(True, graphs.MAX_GRAPHS), (False, 2)])
@torch.no_grad()
def test_runner_replays_give_the_eager_outputs_call_by_call(padded, max_graphs):
    """Refills, windows at moving starts and plain passes, each replay against the same eager call; with
    room for two graphs only, each capture evicts the least recently used one."""
    model = _model()
    runner = graphs.GraphRunner(model, capture=graphs.call_again, max_graphs=max_graphs)
    g = torch.Generator().manual_seed(11)
    P, L, W = 5, 12, 4
    mask = torch.ones(2, P + L, dtype=torch.bool)
    mask[0, :2] = False  # a padded prompt: positions come from the mask
    mask = mask if padded else None
    ref_cache = None
    for block in range(3):
        x = torch.randint(3, 60, (2, P + L), generator=g)  # a new canvas each block
        ref = model(x, attention_mask=mask, use_cache=True, compute_next=False, logits_from=P)
        got = runner(x, attention_mask=mask, use_cache=True, compute_next=False, logits_from=P)
        assert torch.equal(got.logits, ref.logits) and got.kv_cache is runner.cache
        ref_cache = ref.kv_cache
        for _ in range(2):
            x[:, P + block * W] = int(torch.randint(3, 60, (1,), generator=g))  # a commit inside the window
            lo = P + block * W - 1
            ref = model(x[:, lo:lo + W + 1], attention_mask=mask, kv_cache=ref_cache, cache_start=lo)
            got = runner(x[:, lo:lo + W + 1], attention_mask=mask, kv_cache=runner.cache, cache_start=lo)
            assert torch.equal(got.logits, ref.logits) and torch.equal(got.next_logits, ref.next_logits)
        ref = model(x, compute_next=False, logits_from=P)
        assert torch.equal(runner(x, compute_next=False, logits_from=P).logits, ref.logits)
    assert all(torch.equal(a, b) for a, b in zip(runner.cache.keys, ref_cache.keys))
    assert runner.eager == 1 and runner.replays == 3 * 4 - 1  # the first refill ran eager
    assert len(runner.graphs) == min(3, max_graphs)


CASES = [
    ("masked", {}, "none"),
    ("masked", {"block_length": 4}, "prefix"),
    ("masked", {"block_length": 4}, "dual"),
    ("masked", {"block_length": 8, "cfg_scale": 0.5}, "dual"),
    ("threshold", {"threshold": 0.9, "block_length": 4}, "dual"),
    ("edit", {"block_length": 8, "edit_passes": 2}, "dual"),
    ("edit", {"edit_passes": 3}, "none"),
    ("remdm", {"schedule": "cap", "eta": 0.3}, "prefix"),
]


@pytest.mark.parametrize("name,params,mode", CASES, ids=str)
def test_replayed_passes_decode_like_eager_ones(monkeypatch, name, params, mode):
    """Every pass but the warm-up and first refills comes from a "graph" that reads only its static buffers."""
    model = _model()
    ref = generate(model, PROMPTS, 16, get_strategy(name, **params), "1/2", seed=4, cache=mode, graphs="off")
    monkeypatch.setattr(graphs, "graph_fallback_reason", lambda *args: None)
    monkeypatch.setattr(graphs, "cuda_capture", graphs.call_again)
    monkeypatch.setattr("refinery.core.decode.graph_fallback_reason", graphs.graph_fallback_reason)
    got = generate(model, PROMPTS, 16, get_strategy(name, **params), "1/2", seed=4, cache=mode, graphs="on")
    assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.lengths, ref.lengths)
    assert torch.equal(got.nfe, ref.nfe)
    assert got.graph_passes == len(got.trace) - 1  # all but the first pass (a warm-up, or the first refill)


def test_graphs_stay_with_the_model_until_its_weights_move(monkeypatch):
    model = _model()
    strategy = get_strategy("masked", block_length=4)
    ref = generate(model, PROMPTS, 16, strategy, "1/2", cache="dual", graphs="off")
    monkeypatch.setattr("refinery.core.decode.graph_fallback_reason", lambda *args: None)
    monkeypatch.setattr(graphs, "cuda_capture", graphs.call_again)
    first = generate(model, PROMPTS, 16, strategy, "1/2", cache="dual", graphs="on")
    again = generate(model, PROMPTS, 16, strategy, "1/2", cache="dual", graphs="on")
    assert first.graph_passes == len(first.trace) - 1 and again.graph_passes == len(again.trace)  # nothing eager
    runner = graphs.runner_for(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.0)  # in place: the graphs read the same memory, they stay
    assert graphs.runner_for(model) is runner
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # a new tensor: new graphs
    moved = generate(model, PROMPTS, 16, strategy, "1/2", cache="dual", graphs="on")
    assert graphs.runner_for(model) is not runner and moved.graph_passes == len(moved.trace) - 1
    busy = graphs.acquire_forward(model)  # another thread's call holds the graphs: this one runs eager
    assert busy is graphs.runner_for(model) and graphs.acquire_forward(model) is model
    other = generate(model, PROMPTS, 16, strategy, "1/2", cache="dual", graphs="on")
    assert other.graph_passes == 0 and torch.equal(other.tokens, ref.tokens)
    graphs.release_forward(busy)
    assert generate(model, PROMPTS, 16, strategy, "1/2", cache="dual", graphs="on").graph_passes == len(ref.trace)
    graphs.release_graphs(model)
    assert graphs.runner_for(model).replays == 0
    for res in (first, again, moved):
        assert torch.equal(res.tokens, ref.tokens)


def test_a_failed_capture_is_logged_once_and_the_pass_runs_eager(monkeypatch, caplog):
    model = _model()
    ref = generate(model, PROMPTS, 16, get_strategy("masked", block_length=4), "1/2", cache="dual", graphs="off")
    calls = []

    def broken(fn, pool):
        calls.append(1)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr("refinery.core.decode.graph_fallback_reason", lambda *args: None)
    monkeypatch.setattr(graphs, "cuda_capture", broken)
    with caplog.at_level(logging.WARNING, logger="refinery.core.graphs"):
        got = generate(model, PROMPTS, 16, get_strategy("masked", block_length=4), "1/2", cache="dual", graphs="on")
    assert torch.equal(got.tokens, ref.tokens) and got.graph_passes == 0 and len(calls) == 1
    assert caplog.text.count("running eager from here: RuntimeError: operation not permitted") == 1
