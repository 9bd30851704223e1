"""Hand-built cases for LLaDA's sampler, and equality with the paper's straightforward loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tiny_models import EOS, MASK, VOCAB
from refinery.core.decode import generate
from refinery.strategies import get_strategy
from refinery.strategies.sampling import select_topk, split_evenly, transfer_counts


def confidence_script(conf, token_of=lambda i: 10 + i, prompt_len=1, uncond=None):
    """Logits where generation position i predicts ``token_of(i)`` with logit conf[i] (all else 0)."""

    def fn(ids):
        B, W = ids.shape
        logits = torch.zeros(B, W, VOCAB)
        for i, c in enumerate(conf):
            logits[:, prompt_len + i, token_of(i)] = c
        if uncond is not None:
            masked_prompt = ids[:, :prompt_len] == MASK
            logits = torch.where(masked_prompt.all(1)[:, None, None], uncond(logits), logits)
        return logits, None

    return fn


def test_low_confidence_commits_the_k_most_confident_first(scripted):
    conf = [1.0, 5.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0]
    model = scripted(confidence_script(conf))
    res = generate(model, [[3]], 8, "masked", "1/4")  # 2 passes, 4 each
    first = res.trace.compact().events["unmasked"]
    first_pass = sorted(first[first[:, 0] == 0][:, 2].tolist())
    assert first_pass == [1, 3, 5, 7]
    assert res.tokens[0].tolist() == [10 + i for i in range(8)]
    assert model.calls == 2 and res.nfe.tolist() == [2]


def test_uniform_schedule_and_random_remasking_counts(scripted):
    model = scripted(confidence_script([1.0] * 10))
    res = generate(model, [[3]], 10, get_strategy("masked", remasking="random"), "2/5", seed=1)  # 4 passes
    per_pass = [int(r.unmasked.sum()) for r in res.trace.records]
    assert per_pass == [3, 3, 2, 2] == split_evenly(10, 4)
    assert transfer_counts(torch.tensor([10, 3]), 4).tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]
    assert transfer_counts(torch.tensor([10]), 4, per_pass=4).tolist() == [[4, 4, 2, 0]]


def test_semi_autoregressive_blocks_commit_inside_the_current_block_only(scripted):
    conf = [1.0, 1.0, 1.0, 1.0, 9.0, 9.0, 9.0, 9.0]  # block 2 is more confident, but must wait
    model = scripted(confidence_script(conf))
    res = generate(model, [[3]], 8, get_strategy("masked", block_length=4), "1/2")  # 4 passes, 2 per block
    ev = res.trace.compact().events["unmasked"]
    assert set(ev[ev[:, 0] < 2][:, 2].tolist()) == {0, 1, 2, 3}
    assert set(ev[ev[:, 0] >= 2][:, 2].tolist()) == {4, 5, 6, 7}


def test_suppress_eos_ranks_end_of_text_last(scripted):
    conf = [1.0, 9.0, 2.0, 3.0]
    model = scripted(confidence_script(conf, token_of=lambda i: EOS if i == 1 else 10 + i))
    res = generate(model, [[3]], 4, get_strategy("masked", suppress_eos=True), "1/1")
    order = res.trace.compact().events["unmasked"][:, 2].tolist()
    assert order == [3, 2, 0, 1]
    plain = generate(model, [[3]], 4, "masked", "1/1").trace.compact().events["unmasked"][:, 2].tolist()
    assert plain == [1, 3, 2, 0]


def test_classifier_free_guidance_mixes_unconditional_logits(scripted):
    w = 2.0

    def uncond(logits):  # the unconditional pass prefers token 20 a little everywhere
        out = logits.clone()
        out[..., 20] = 0.5
        out[..., 11] += 0.6
        return out

    model = scripted(confidence_script([1.0, 1.0], uncond=uncond))
    res = generate(model, [[3]], 2, get_strategy("masked", cfg_scale=w), "1/1")
    # position 0 predicts 10 (cond 1 vs uncond 1: guided 1; token 20: 0 + 3*(0-0.5) < 0) -> 10
    # position 1 predicts 11 in cond (1.0) but uncond 1.6: guided 1.6 + 3*(1.0-1.6) = -0.2 < 0 -> token 0
    assert res.tokens[0].tolist()[0] == 10 and res.tokens[0].tolist()[1] != 11
    assert res.nfe.tolist() == [2]  # guidance costs two forward passes per pass


def llada_reference(model, prompt, gen_length):
    """LLaDA paper, Algorithm 5 at one token per step, written out plainly (float64 softmax)."""
    x = torch.tensor([prompt + [MASK] * gen_length])
    for _ in range(gen_length):
        logits = model(x).logits
        logits[..., MASK] = float("-inf")
        logits[..., model.config.delete_token_id] = float("-inf")
        x0 = logits.argmax(-1)
        p = F.softmax(logits.double(), -1).gather(-1, x0[..., None])[..., 0]
        p = torch.where(x == MASK, p, torch.tensor(float("-inf"), dtype=torch.float64))
        j = int(p[0].argmax())
        x[0, j] = x0[0, j]
    return x[0, len(prompt):]


@torch.no_grad()
def test_greedy_budget_one_equals_the_papers_loop(tiny_model):
    for prompt in ([5, 6, 7], [9, 8, 7, 6, 5, 4]):
        ours = generate(tiny_model, [prompt], 12, "masked", "1/1", record_trace=False)
        assert ours.tokens[0].tolist() == llada_reference(tiny_model, prompt, 12).tolist()


def test_select_topk_ties_break_to_lower_positions_and_skips_minus_inf():
    scores = torch.tensor([[0.5, 0.5, float("-inf"), 0.5], [0.1, 0.9, 0.2, float("-inf")]])
    out = select_topk(scores, torch.tensor([2, 4]))
    assert out.tolist() == [[True, True, False, False], [True, True, True, False]]
