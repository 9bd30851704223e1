"""Dream's entropy / margin ordering (strategies/dream.py): its presets against a standalone port of Dream's
``diffusion_generate`` loop, hand-built cases for the ordering rules and the schedule, and the config ranges.

The port below is written from Dream's sampling logic (HKUNLP/Dream ``generation_utils``: ``_sample`` and
``sample_tokens``), shaped as the reference is, one loop over ``model(x).logits`` that shares no code with
``strategies/``: the batch's mean mask count, a top-n over the canvas, a categorical draw (Gumbel-max
by the ``p / Exp(1)`` form) from the tempered nucleus, an HF-style nucleus written its own way. It omits
Dream's one-position logit shift (its AR-initialised model reads position i at i - 1; ours predicts in place).
"""

from __future__ import annotations

import pytest
import torch

from tiny_models import DELETE, MASK, VOCAB
from refinery.core.decode import generate, left_pad
from refinery.core.errors import ConfigError
from refinery.strategies import get_strategy
from refinery.strategies.dream import nucleus_keep_crossing
from refinery.strategies.sampling import nucleus_filter

PROMPTS = ([5, 6, 7], [9, 8, 7, 6, 5, 4, 3], [11])  # ragged: left-padded into one block


@torch.no_grad()
def dream_port(model, prompt, attention_mask, *, gen_length, steps, alg="entropy", temperature=0.0, top_p=None,
               alg_temp=0.0, eps=1e-3, rand=torch.rand, multinomial=None):
    """Dream's sampling loop. prompt (B, P) left-padded ids (+ attention_mask or None) -> (steps, B, gen_length):
    the generation region after every step (Dream's ``output_history``)."""
    mask_id = model.config.mask_token_id
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=torch.long)], 1)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype)], 1)
    timesteps = torch.linspace(1, eps, steps + 1)
    history = []
    for i in range(steps):
        mask_index = x == mask_id
        logits = model(x, attention_mask=attention_mask).logits.float()
        if temperature > 0:
            logits = logits / temperature
        if top_p is not None and top_p < 1:  # keep tokens while the mass strictly above them is <= top_p
            order = logits.argsort(-1, descending=True)
            p_sorted = torch.softmax(logits, -1).gather(-1, order)
            above = torch.cat([torch.zeros_like(p_sorted[..., :1]), p_sorted.cumsum(-1)[..., :-1]], -1)
            cut = torch.zeros_like(above, dtype=torch.bool).scatter(-1, order, above > top_p)
            logits = logits.masked_fill(cut, torch.finfo(logits.dtype).min)
        probs = torch.softmax(logits, -1)
        if temperature > 0:
            x0 = (probs.double() / -torch.log(rand(probs.shape, dtype=torch.float64))).argmax(-1)
        else:
            x0 = probs.argmax(-1)
        if alg == "entropy":
            confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
        elif alg == "topk_margin":
            two = probs.sort(-1, descending=True).values
            confidence = two[..., 0] - two[..., 1]
        else:
            confidence = probs.gather(-1, x0[..., None])[..., 0]
        masks = mask_index.sum() / B  # Dream counts the batch's mean
        n = int(masks * (1 - timesteps[i + 1] / timesteps[i])) if i < steps - 1 else int(masks)
        history.append(x[:, P:].clone())
        if n == 0:
            continue
        full = torch.where(mask_index, confidence, torch.tensor(-torch.inf))
        if alg_temp == 0:  # Dream's torch.topk leaves the order of exact ties open: lower index first here
            chosen = full.sort(dim=-1, descending=True, stable=True).indices[:, :n]
        else:
            weights = torch.softmax(full / alg_temp, -1)
            chosen = torch.stack([(multinomial or (lambda w, k, b: torch.multinomial(w, k)))(weights[b], n, b)
                                  for b in range(B)])
        proposal = torch.where(mask_index, x0, mask_id)
        rows = torch.arange(B)[:, None]
        x[rows, chosen] = proposal[rows, chosen]
        history[-1] = x[:, P:].clone()
    return torch.stack(history)


class RowStream:
    """The strategy's uniforms for the port: one generator per row seeded as ``generate`` seeds it, drawn
    over the region columns in the same order and shapes; prompt columns (never read) get 0.5."""

    def __init__(self, batch: int, prompt_width: int, seed: int):
        self.gens = [torch.Generator().manual_seed(seed) for _ in range(batch)]
        self.P = prompt_width

    def __call__(self, shape, dtype=torch.float32):
        out = torch.full(tuple(shape), 0.5, dtype=dtype)
        out[:, self.P:] = torch.stack([torch.rand((shape[1] - self.P,) + tuple(shape[2:]), generator=g, dtype=dtype)
                                       for g in self.gens])
        return out

    def multinomial(self, weights: torch.Tensor, n: int, row: int) -> torch.Tensor:
        """Dream's draw of ``n`` canvas positions, on row ``row``'s stream over the region columns only (the
        prompt's weights are 0: leaving them out changes no probability, only what the draw consumes)."""
        return torch.multinomial(weights[self.P:], n, generator=self.gens[row]) + self.P


def ours_and_port(model, prompts, gen_length, budget, preset="paper", seed=0, **params):
    """-> (our result, our canvas after every pass (passes, B, L), the port's (steps, B, L))."""
    ours = generate(model, prompts, gen_length, get_strategy("dream", preset=preset, **params), budget, seed=seed)
    cfg = get_strategy("dream", preset=preset, **params).config
    ids, attn = left_pad(prompts, model.config.pad_token_id, "cpu")
    stream = RowStream(len(prompts), ids.shape[1], seed)
    ref = dream_port(model, ids, None if bool(attn.all()) else attn.long(), gen_length=gen_length,
                     steps=int(ours.max_nfe), alg=cfg.alg, temperature=cfg.temperature, top_p=cfg.top_p,
                     alg_temp=cfg.alg_temp, eps=cfg.eps, rand=stream,
                     multinomial=stream.multinomial)
    return ours, torch.stack([r.tokens for r in ours.trace.records]).long(), ref


def neighbour_model(scripted, mask_columns=()):
    """A scripted model whose prediction at a column depends on its neighbours' tokens (so the commit order
    shapes the output) with a per-column sharpness (so entropies and margins spread): seeded random tables,
    columns counted from the right (left padding moves nothing). The mask id never wins, except at the
    ``mask_columns`` (counted from the right), where it is the top prediction."""
    g = torch.Generator().manual_seed(11)
    left, right, pos = (torch.randn(n, VOCAB, generator=g) for n in (VOCAB, VOCAB, 64))
    sharp = torch.rand(64, generator=g) * 3.5 + 0.5

    def fn(ids):
        back = torch.arange(ids.shape[1] - 1, -1, -1)
        before = torch.cat([ids[:, :1], ids[:, :-1]], 1)  # no wrap-around: the padding stays unseen
        after = torch.cat([ids[:, 1:], ids[:, -1:]], 1)
        logits = sharp[back, None] * (pos[back] + 1.5 * left[before] + 1.5 * right[after])
        logits[..., MASK] = -30.0
        for c in mask_columns:
            logits[:, -1 - c, MASK] = logits[:, -1 - c].max(-1).values + 1.0
        return logits, None

    return scripted(fn)


@pytest.fixture(params=["tiny", "neighbour"])
def model(request, tiny_model, scripted):
    return tiny_model if request.param == "tiny" else neighbour_model(scripted)


@pytest.mark.parametrize("preset", ["paper", "paper-greedy"])
@pytest.mark.parametrize("alg", ["entropy", "topk_margin", "maskgit_plus"])
@pytest.mark.parametrize("gen_length,budget", [(8, "1/1"), (16, "1/2"), (24, "1/4"), (12, "1/3")])
def test_paper_presets_equal_the_dream_port_on_a_ragged_batch(model, preset, alg, gen_length, budget):
    ours, history, ref = ours_and_port(model, PROMPTS, gen_length, budget, preset, seed=5, alg=alg)
    assert not (ref[-1] == MASK).any()  # rows kept equal mask counts: Dream's batch mean is each row's count
    assert torch.equal(history, ref)  # the canvas after every step, not only the output
    assert ours.nfe.tolist() == [int(ours.max_nfe)] * len(PROMPTS)  # every step is charged, empty ones too


@pytest.mark.parametrize("alg_temp", [0.3, 2.0])
def test_alg_temp_draws_positions_as_dream_does_on_the_rows_stream(model, alg_temp):
    _, history, ref = ours_and_port(model, PROMPTS, 16, "1/2", seed=3, alg_temp=alg_temp)
    assert torch.equal(history, ref)
    _, greedy_order, _ = ours_and_port(model, PROMPTS, 16, "1/2", seed=3)
    assert not torch.equal(history, greedy_order)  # the draw really changes the order


def test_the_outputs_depend_on_the_rule_and_the_order(scripted):
    """Guards the port comparisons above: on the neighbour model the three rules and LLaDA's top-1 order
    write different texts, so equal canvases mean equal rules."""
    model = neighbour_model(scripted)
    outs = [generate(model, PROMPTS, 16, get_strategy("dream", preset="paper-greedy", alg=a), "1/2").tokens
            for a in ("entropy", "topk_margin", "maskgit_plus")]
    outs.append(generate(model, PROMPTS, 16, get_strategy("masked", preset="paper"), "1/2").tokens)
    assert all(not torch.equal(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])


def test_a_predicted_mask_id_stays_under_paper_and_never_appears_under_project(scripted):
    model = neighbour_model(scripted, mask_columns=(2, 9))
    for b, prompt in enumerate(PROMPTS):  # row by row: Dream's batch mean and our per-row count agree
        _, history, ref = ours_and_port(model, [prompt], 16, "1/4", "paper-greedy")
        assert torch.equal(history, ref), b
    paper = generate(model, PROMPTS, 16, get_strategy("dream", preset="paper-greedy"), "1/4")
    project = generate(model, PROMPTS, 16, get_strategy("dream", preset="project"), "1/4")
    assert (paper.tokens == MASK).any() and not (project.tokens == MASK).any()
    assert not (project.tokens == DELETE).any()
    rows = [generate(model, [p], 16, get_strategy("dream", preset="paper-greedy"), "1/4").tokens[0] for p in PROMPTS]
    assert torch.equal(paper.tokens, torch.stack(rows))  # our per-row count: a batch decodes as its rows


def three_positions(ids):
    """Fixed distributions at region columns 0-2 (tokens 10-40): E = (.68, .32) has the lowest entropy,
    F = (.72, .04 x 7) the highest top-1 probability, G = (.70, .01 x 30) the widest top-2 margin."""
    probs = torch.full((ids.shape[1], VOCAB), 1e-12)
    for col, row in zip(range(ids.shape[1] - 3, ids.shape[1]), ([.68, .32], [.72] + [.04] * 7, [.70] + [.01] * 30)):
        probs[col, 10:10 + len(row)] = torch.tensor(row)
    return probs.log().expand(ids.shape[0], -1, -1).clone(), None


@pytest.mark.parametrize("alg,first", [("entropy", 0), ("maskgit_plus", 1), ("topk_margin", 2)])
def test_each_rule_commits_its_own_position_first(scripted, alg, first):
    res = generate(scripted(three_positions), [[3]], 3, get_strategy("dream", alg=alg), "1/1")
    unmasked = [r.unmasked[0].nonzero().flatten().tolist() for r in res.trace.records]
    # linspace(1, 1e-3, 4): floor(3 * 0.333) = 0, then floor(3 * 0.499) = 1, then the last step takes the rest
    assert unmasked == [[], [first], sorted({0, 1, 2} - {first})]
    assert res.tokens[0].tolist() == [10, 10, 10]


def test_schedule_floors_as_dream_and_differs_from_llada_uniform(tiny_model):
    res = generate(tiny_model, [[5, 6]], 8, get_strategy("dream"), "1/2")
    # t = 1, .75025, .5005, .25075, .001: floor(8 x .24975) = 1, floor(7 x .33289) = 2, floor(5 x .49900) = 2, 3
    assert [int(r.unmasked[0].sum()) for r in res.trace.records] == [1, 2, 2, 3]
    llada = generate(tiny_model, [[5, 6]], 8, get_strategy("masked"), "1/2")
    assert [int(r.unmasked[0].sum()) for r in llada.trace.records] == [2, 2, 2, 2]


def test_nucleus_keeps_the_crossing_token_where_remdm_drops_it():
    z = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().view(1, 1, 4)
    kept = nucleus_keep_crossing(z, 0.6) > torch.finfo(torch.float32).min
    assert kept.flatten().tolist() == [True, True, False, False]
    assert torch.isfinite(nucleus_filter(z.clone(), 0.6)).flatten().tolist() == [True, False, False, False]


@pytest.mark.parametrize("key,value,reason", [
    ("temperature", -0.1, "must be >= 0"), ("top_p", 0.0, "must lie in (0, 1]"), ("top_p", 1.5, "must lie in"),
    ("alg_temp", -1.0, "must be >= 0"), ("eps", 0.0, "must lie in (0, 1)"), ("eps", 1.0, "must lie in (0, 1)"),
    ("alg", "random", "is not one of"), ("bans", "eos", "is not one of"), ("temperature", "hot", "expected a number"),
])
def test_ranges_and_choices_are_refused_naming_the_parameter(key, value, reason):
    with pytest.raises(ConfigError) as err:
        get_strategy("dream", preset="paper", **{key: value})
    assert str(err.value).startswith(f"strategy 'dream' preset 'paper': {key}: ") and reason in str(err.value)


def test_strategies_presets_lists_the_dream_presets(capsys):
    from refinery.cli import main

    assert main(["strategies", "--presets"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert {("dream", "paper"), ("dream", "paper-greedy"), ("dream", "project")} <= {tuple(w[:2]) for w in lines}
