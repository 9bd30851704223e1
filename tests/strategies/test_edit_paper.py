"""The edit strategy's ``paper`` preset against an independent port of ME-DLM's inference (ports/medlm_infer.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from tiny_models import DELETE, EOS, EOT, MASK, VOCAB
from refinery.core.decode import generate, parse_budget
from refinery.core.edit_labels import apply_edits, apply_edits_reference
from ports.medlm_infer import medlm_infer
from refinery.strategies import get_strategy
from refinery.strategies.sampling import passes_for_budget

BIG = 10.0
PAD = EOS  # the tiny models pad with end-of-text, as LLaDA does


class RuleModel(nn.Module):
    """A scripted two-head model defined on unpadded sequences: ``rule(seq) -> (cur, ahead)`` gives, for each
    real token, the current head's argmax and the next-token head's argmax (the token after it). The batched
    call reads each row's real tokens through the attention mask, so padding never changes an answer."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule
        self.anchor = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(vocab_size=VOCAB, mask_token_id=MASK, delete_token_id=DELETE, eos_token_id=EOS,
                                      pad_token_id=PAD, eot_token_id=EOT)

    def heads(self, seq: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, V) logits of both heads for one unpadded sequence (what the port calls)."""
        cur, ahead = self.rule(seq)
        logits, nxt = torch.zeros(len(seq), VOCAB), torch.zeros(len(seq), VOCAB)
        for j, c in enumerate(cur):  # an entry is a token (logit BIG) or a (token, logit) pair
            tok, value = c if isinstance(c, tuple) else (c, BIG)
            logits[j, tok] = value
        nxt[torch.arange(len(seq)), torch.tensor(ahead, dtype=torch.long)] = BIG
        return logits, nxt

    def forward(self, input_ids, attention_mask=None, compute_next=True, logits_from=0, **kw):
        B, W = input_ids.shape
        logits, nxt = torch.zeros(B, W, VOCAB), torch.zeros(B, W, VOCAB)
        for b in range(B):
            real = torch.ones(W, dtype=torch.bool) if attention_mask is None else attention_mask[b].bool()
            cols = real.nonzero()[:, 0]
            lg, nx = self.heads(input_ids[b, cols].tolist())
            logits[b, cols], nxt[b, cols] = lg, nx
        return SimpleNamespace(logits=logits[:, logits_from:],
                               next_logits=nxt[:, logits_from:] if compute_next else None)


def split(budget: str, gen_length: int) -> tuple[int, int]:
    """(mask passes, edit passes) of the paper preset at this budget."""
    return get_strategy("edit", preset="paper").config.split(passes_for_budget(parse_budget(budget), gen_length))


def run_both(model, model_fn, prompts, gen_length, budget, max_length):
    """Our paper preset through the one decode loop, and the port row by row."""
    res = generate(model, prompts, gen_length, get_strategy("edit", preset="paper", max_length=max_length), budget)
    M, E = split(budget, gen_length)
    ports = [medlm_infer(model_fn, p, gen_length, M, E, mask_id=MASK, pad_id=PAD, del_id=DELETE, eot_id=EOT,
                         max_length=max_length) for p in prompts]
    return res, ports, M, E


def assert_same(res, ports, M, E):
    for b, port in enumerate(ports):
        n, d = int(res.lengths[b]), int(res.draft_lengths[b])
        assert res.draft_tokens[b, :d].tolist() == port.draft, f"row {b}: draft"
        assert res.tokens[b, :n].tolist() == port.answer, f"row {b}: answer"
        assert int(res.nfe[b]) == M + (port.fixed_step if E else 0), f"row {b}: passes"
    final = res.trace.compact().replay()  # the trace reproduces strip, forced end-of-turn and edits
    for b in range(len(ports)):
        assert final[b, : int(res.lengths[b])].tolist() == ports[b].answer


# ----------------------------------------------------------------------------- hand-built ME-DLM cases

DRAFT = [10, PAD, 11, 12, PAD, 13, PAD, PAD]  # what the mask phase writes (pads inside and at the end)


def hand_rule(seq):
    """Prompts are tokens 40-59. Masks -> DRAFT. On the draft [10, 11, 12, EOT]: delete 11, ask 30 before it
    (a gap ME-DLM drops), 31 before 12 (predicted at the deleted token), 14 before EOT, 50 after EOT (no gap
    in ME-DLM). Elsewhere both heads agree with the text."""
    p = sum(40 <= t < 60 for t in seq)
    ans = seq[p:]
    cur, ahead = list(seq), seq[1:] + [EOT]
    if MASK in ans:
        cur = seq[:p] + DRAFT[: len(ans)]
    elif ans == [10, 11, 12, EOT]:
        cur = seq[:p] + [10, DELETE, 12, EOT]
        ahead = seq[1:p] + [10, 30, 31, 14, 50]
    return cur, ahead


@pytest.fixture
def hand():
    model = RuleModel(hand_rule)
    return model, model.heads


def test_hand_case_paper_preset(hand):
    """Budget 1/1 on 8 tokens: 6 mask + 2 edit passes. Pads stripped anywhere, 13 becomes EOT, 11 deleted,
    31 enters before 12 and 14 before EOT; 30 (before the deleted 11) and 50 (after the end) do not."""
    model, fn = hand
    res, ports, M, E = run_both(model, fn, [[40, 41], [42]], 8, "1/1", max_length=40)
    assert (M, E) == (6, 2)
    assert ports[0].draft == [10, 11, 12, EOT] and ports[0].answer == [10, 31, 12, 14, EOT]
    assert_same(res, ports, M, E)
    assert res.nfe.tolist() == [8, 8]  # the second edit pass changes nothing


def test_hand_case_growth_cap():
    """The next-token head asks for 20 before every token, always. max_length = prompt + 8 lets the 6-token
    draft take only its first 2 insertions; the row then stays active (it still wants edits) to the last pass."""
    def rule(seq):
        p = sum(40 <= t < 60 for t in seq)
        ans = seq[p:]
        return (seq[:p] + [10 + i for i in range(len(ans))] if MASK in ans else list(seq)), [20] * len(seq)

    model = RuleModel(rule)
    res, ports, M, E = run_both(model, model.heads, [[40, 41]], 6, "1/1", max_length=10)
    assert (M, E) == (4, 2)
    assert ports[0].answer == [20, 10, 20, 11, 12, 13, 14, EOT] and ports[0].fixed_step == E
    assert_same(res, ports, M, E)


def test_hand_case_default_rules_differ(hand):
    """The project's rules on the same model: the draft is cut at the first pad ([10]), no end-of-turn."""
    model, _ = hand
    res = generate(model, [[40, 41]], 8, get_strategy("edit", edit_passes=2), "1/1")
    assert res.draft_tokens[0, : int(res.draft_lengths[0])].tolist() == [10]


def ranking_rule(seq):
    """Mask phase where the commit order decides the tokens: masked answer positions 5+ predict pad confidently,
    position 2 predicts the mask id, the others 20 + (ordinary tokens committed so far) less surely. ME-DLM
    scores pad 0 and allows the mask id: it commits 2 and the others first; LLaDA's rule commits the pads first."""
    p = sum(40 <= t < 60 for t in seq)
    ans = seq[p:]
    done = sum(t not in (MASK, PAD) for t in ans)
    cur = list(seq)
    for i, t in enumerate(ans):
        if t == MASK:
            cur[p + i] = (PAD, 9.0 - 0.1 * i) if i >= 5 else (MASK, 6.0) if i == 2 else (20 + done, 5.0 - 0.1 * i)
    return cur, seq[1:] + [EOT]


def test_mask_phase_ranking_case():
    model = RuleModel(ranking_rule)
    res, ports, M, E = run_both(model, model.heads, [[40, 41], [42, 43, 44]], 8, "1/1", max_length=30)
    assert MASK in ports[0].draft
    assert_same(res, ports, M, E)
    llada = generate(model, [[40, 41]], 8, get_strategy("edit", preset="paper", mask_phase="llada"), "1/1")
    assert llada.draft_tokens[0, : int(llada.draft_lengths[0])].tolist() != ports[0].draft


def test_empty_draft_stays_empty():
    """A mask phase that writes only pads leaves an empty answer; with no token there is no gap to insert into."""
    model = RuleModel(lambda s: ([t if t != MASK else PAD for t in s], [20] * len(s)))
    res, ports, M, E = run_both(model, model.heads, [[40, 41, 42]], 8, "1/2", max_length=30)
    assert ports[0].answer == [] and int(res.lengths[0]) == 0
    assert_same(res, ports, M, E)


# ----------------------------------------------------------------------------- tiny random model


class Nudged(nn.Module):
    """The tiny random model with its delete and pad logits pushed up on some inputs, so that deletions,
    inserted delete tokens and pads inside the draft all happen (the plain random heads rarely pick them)."""

    def __init__(self, base):
        super().__init__()
        self.base, self.config = base, base.config

    def forward(self, input_ids, attention_mask=None, compute_next=True, logits_from=0, **kw):
        out = self.base(input_ids, attention_mask=attention_mask, compute_next=compute_next, logits_from=logits_from)
        ids = input_ids[:, logits_from:]
        logits = out.logits.clone()
        logits[..., DELETE] += 25.0 * (ids % 5 == 0)
        logits[..., PAD] += 8.0 * (ids == MASK)
        nxt = None
        if out.next_logits is not None:
            nxt = out.next_logits.clone()
            nxt[..., DELETE] += 25.0 * (ids % 7 == 3)
        return SimpleNamespace(logits=logits, next_logits=nxt)


@pytest.fixture(params=["plain", "nudged"])
def random_model(request, tiny_model):
    model = tiny_model if request.param == "plain" else Nudged(tiny_model)

    def fn(ids):
        out = model(torch.tensor([ids]))
        return out.logits[0], out.next_logits[0]

    return model, fn


@pytest.mark.parametrize("gen_length,budget", [(6, "1/1"), (10, "1/2"), (16, "1/4"), (12, "1/3")])
def test_paper_preset_equals_port_on_tiny_models(random_model, gen_length, budget):
    """Greedy decoding of a ragged batch: drafts, answers and passes equal the port's row by row. The random
    heads replace, delete and insert everywhere, so rows grow into the cap within a few passes."""
    model, fn = random_model
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    res, ports, M, E = run_both(model, fn, prompts, gen_length, budget, max_length=gen_length + 20)
    assert_same(res, ports, M, E)


def test_paper_preset_cap_of_6144_keeps_the_canvas_small(random_model):
    """With the preset's own cap the canvas widens only as far as the rows grow (here a few dozen columns)."""
    model, fn = random_model
    prompts = [[5, 6, 7], [8]]
    res = generate(model, prompts, 8, get_strategy("edit", preset="paper"), "1/1")
    ports = [medlm_infer(fn, p, 8, 6, 2, mask_id=MASK, pad_id=PAD, del_id=DELETE, eot_id=EOT) for p in prompts]
    assert_same(res, ports, 6, 2)
    assert int(res.lengths.max()) <= res.tokens.shape[1] <= 2 * (2 * 8 + 1) + 1  # two passes, each at most 2W + 1


def test_project_rules_with_growth_room(tiny_model):
    """max_length also lifts the gen_length cut for the project's rules (undo rule included): the trace replays
    and rows may end longer than gen_length."""
    strategy = get_strategy("edit", preset="project", max_length=30)
    prompts = [[5, 6, 7], [8]]
    res = generate(tiny_model, prompts, 8, strategy, "1/1")
    final = res.trace.compact().replay()
    for b, prompt in enumerate(prompts):
        n = int(res.lengths[b])
        assert final[b, :n].tolist() == res.tokens[b, :n].tolist() and len(prompt) + n <= 30
    assert int(res.lengths.max()) > 8  # the random heads insert more than they delete


def test_tiny_models_exercise_the_rules(tiny_model):
    """Guard against a vacuous comparison: the port meets deletions, pads inside the draft, inserted special
    tokens and a binding cap on the models the equality test uses."""
    seen = set()

    def fn(ids):
        out = model(torch.tensor([ids]))
        cur, nxt = out.logits[0].argmax(-1), out.next_logits[0].argmax(-1)
        masked = torch.tensor(ids) == MASK
        hits = {"delete": (cur == DELETE) & ~masked, "pad draft": (cur == PAD) & masked,
                "special insert": (nxt == DELETE) | (nxt == PAD)}
        seen.update(k for k, v in hits.items() if v.any())
        return out.logits[0], out.next_logits[0]

    for model in (tiny_model, Nudged(tiny_model)):
        for p in ([5, 6, 7], [8], [9, 10, 11, 12, 13]):
            r = medlm_infer(fn, p, 16, 12, 4, mask_id=MASK, pad_id=PAD, del_id=DELETE, eot_id=EOT, max_length=36)
            if len(p) + len(r.answer) == 36:
                seen.add("cap")
    assert {"delete", "pad draft", "special insert", "cap"} <= seen


# ----------------------------------------------------------------------------- apply_edits in ME-DLM mode


@pytest.mark.parametrize("gaps,specials",
                         [("before_kept", True), ("before_kept", False), ("all", True), ("all", False)])
@pytest.mark.parametrize("seed", range(3))
def test_apply_edits_modes_match_reference(seed, gaps, specials):
    """apply_edits with ME-DLM's gaps, special-token insertions and the length cap, against its plain twin."""
    g = torch.Generator().manual_seed(seed)
    B, W = 6, 9
    lengths = torch.randint(0, W + 1, (B,), generator=g)
    pick = lambda *shape: torch.tensor([3, 4, 5, DELETE, EOS, PAD])[torch.randint(0, 6, shape, generator=g)]
    tokens, cur, nxt, gap0 = pick(B, W), pick(B, W), pick(B, W), pick(B)
    room = lengths + torch.randint(-1, 3, (B,), generator=g).clamp(min=0)
    res = apply_edits(tokens, lengths, cur, nxt, gap0, delete_id=DELETE, eos_id=EOS, pad_id=PAD,
                      gaps=gaps, insert_specials=specials, room=room)
    for b in range(B):
        ref = apply_edits_reference(tokens[b].tolist(), int(lengths[b]), cur[b].tolist(), nxt[b].tolist(),
                                    int(gap0[b]), delete_id=DELETE, eos_id=EOS, pad_id=PAD, width=W,
                                    gaps=gaps, insert_specials=specials, room=int(room[b]))
        assert res.tokens[b, : int(res.lengths[b])].tolist() == ref["tokens"]
        assert {int(i): int(res.inserted_tokens[b, i]) for i in res.inserted[b].nonzero()[:, 0]} == ref["inserted"]


# ----------------------------------------------------------------------------- presets


def test_project_preset_is_the_shipped_entry():
    with open(Path(__file__).parents[2] / "experiments" / "ablations" / "embedded_default.yaml") as f:
        entry = next(s for s in yaml.safe_load(f)["strategies"] if s["name"] == "edit")
    assert get_strategy("edit", preset="project").config == get_strategy("edit", **entry["params"]).config


def test_paper_preset_split_is_three_to_one():
    assert split("1/8", 512) == (48, 16)
    assert split("1/4", 64) == (12, 4)


def test_max_length_must_leave_room():
    with pytest.raises(ValueError, match="max_length"):
        generate(RuleModel(hand_rule), [[40, 41, 42]], 8, get_strategy("edit", preset="paper", max_length=10), "1/1")
