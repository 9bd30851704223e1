"""Hand-built cases for ME-DLM edit refinement."""

from __future__ import annotations

import pytest
import torch

from tiny_models import DELETE, EOS, MASK, VOCAB
from refinery.core.decode import generate
from refinery.strategies import get_strategy

BIG = 10.0


def row_script(edit_row, prompt_len=1):
    """A scripted model: on a canvas with masks it predicts [10, 11, 12] then EOS padding; on a draft (the
    region up to its first EOS) ``edit_row(logits, nxt, draft)`` fills that row's two heads."""

    def fn(ids):
        B, W = ids.shape
        logits = torch.zeros(B, W, VOCAB)
        nxt = torch.zeros(B, W, VOCAB)
        for b in range(B):
            region = ids[b, prompt_len:].tolist()
            if MASK in region:
                for i, t in enumerate([10, 11, 12] + [EOS] * (len(region) - 3)):
                    logits[b, prompt_len + i, t] = BIG
            else:
                n = region.index(EOS) if EOS in region else len(region)
                edit_row(logits[b, prompt_len:], nxt[b, prompt_len - 1:], region[:n])
        return logits, nxt

    return fn


def edit_script():
    """Mask phase drafts [10, 11, 12] + EOS padding; the first edit pass sees that draft and asks to replace
    11 -> 21, delete 12 and insert 30 after 10; on anything else both heads agree with the input."""

    def edit_row(logits, nxt, draft):  # logits from the region's first column; nxt from the one before it
        cur = [10, 21, DELETE] if draft == [10, 11, 12] else draft
        following = [t for t in cur if t != DELETE] + [EOS]
        gaps = list(following)  # "no insertion" = the token that follows
        if draft == [10, 11, 12]:
            gaps[1] = 30  # the gap after position 0 gets 30
        for i, t in enumerate(cur):
            logits[i, t] = BIG
        # next head at column c predicts the gap after c; the last prompt column predicts gap 0
        survivors = [i for i, t in enumerate(cur) if t != DELETE]
        nxt[0, gaps[0]] = BIG
        for j, i in enumerate(survivors):
            nxt[1 + i, gaps[j + 1]] = BIG
        for i, t in enumerate(cur):
            if t == DELETE:  # a deleted position's gap: predict what follows anyway (no insertion)
                later = [cur[k] for k in range(i + 1, len(cur)) if cur[k] != DELETE] + [EOS]
                nxt[1 + i, later[0]] = BIG

    return row_script(edit_row)


def test_mask_phase_then_replace_delete_insert_then_stop_early(scripted):
    model = scripted(edit_script())
    res = generate(model, [[3]], 8, get_strategy("edit", edit_passes=3), "1/1")
    n = int(res.lengths[0])
    assert res.tokens[0, :n].tolist() == [10, 30, 21]
    assert res.draft_tokens[0, :int(res.draft_lengths[0])].tolist() == [10, 11, 12]  # the mask phase's draft
    assert res.nfe.tolist() == [7] and res.max_nfe == 8  # 5 mask + 2 edit passes (the second changes nothing)
    c = res.trace.compact()
    assert list(c.phases) == ["mask"] * 5 + ["edit"] * 2
    ev = c.row_events(5, 0)
    assert ev["replaced"].tolist() == [[1, 21]] and ev["deleted"].tolist() == [[2, 12]]
    assert ev["inserted"].tolist() == [[1, 30]]  # gap 1 = between positions 0 and 1
    assert (c.replay() == res.tokens.numpy()).all()


def test_draft_is_cut_at_its_first_end_of_text_even_with_text_after_it(scripted):
    def fn(ids):  # the mask phase writes [10, EOS, 11, EOS, ...]; on the draft both heads agree with it
        logits, nxt = torch.zeros(*ids.shape, VOCAB), torch.zeros(*ids.shape, VOCAB)
        region = ids[0, 1:].tolist()
        body = [10, EOS, 11] + [EOS] * (len(region) - 3) if MASK in region else [10, EOS]
        for i, t in enumerate(body):
            logits[0, 1 + i, t] = BIG
            nxt[0, i, t] = BIG
        return logits, nxt

    res = generate(scripted(fn), [[3]], 6, get_strategy("edit", edit_passes=1), "1/1")
    assert res.draft_tokens[0, :int(res.draft_lengths[0])].tolist() == [10]
    assert (res.trace.compact().replay() == res.tokens.numpy()).all()


def test_budget_split(scripted):
    cfg = get_strategy("edit").config
    assert cfg.split(64) == (48, 16)  # ME-DLM's 1/8 setting on 512 tokens
    assert get_strategy("edit", edit_passes=3).config.split(8) == (5, 3)
    assert get_strategy("edit", edit_passes=9).config.split(8) == (1, 7)


def test_edit_needs_the_next_token_head(tiny_model):
    from refinery.core.model import LLaDAModel

    from tiny_models import tiny_config

    plain = LLaDAModel(tiny_config(next_token_head=False)).eval()
    with pytest.raises(ValueError, match="next-token head"):
        generate(plain, [[5, 6]], 8, "edit", "1/1")


def test_editing_a_given_draft_without_a_mask_phase(tiny_model):
    init = torch.tensor([[20, 21, 22, EOS, EOS, EOS], [23, EOS, EOS, EOS, EOS, EOS]])
    res = generate(tiny_model, [[5, 6], [7]], 6, get_strategy("edit", edit_passes=2), "1/2", init=init)
    c = res.trace.compact()
    assert set(c.phases) <= {"edit"} and (res.nfe <= 2).all()
    assert (c.replay() == res.tokens.numpy()).all()


def replace_script(plan):
    """Mask phase drafts [10, 11, 12]; an edit pass on draft d replaces it token by token with plan[d]
    (same length, no deletes or inserts), or keeps it when d is not in the plan."""

    def edit_row(logits, nxt, draft):
        cur = list(plan.get(tuple(draft), draft))
        for i, t in enumerate(cur):
            logits[i, t] = BIG
        for c, t in enumerate(cur + [EOS]):  # no insertion anywhere: each gap predicts the token after it
            nxt[c, t] = BIG

    return row_script(edit_row)


@pytest.mark.parametrize("rule", [{"stop_on_growth": True}, {"max_change_fraction": 0.5}])
def test_stop_rules_reject_a_diverging_pass_and_keep_the_canvas(scripted, rule):
    # pass 1 changes one token of three, pass 2 would rewrite all three: both rules keep [10, 21, 12]
    plan = {(10, 11, 12): (10, 21, 12), (10, 21, 12): (40, 41, 42)}
    model = scripted(replace_script(plan))
    free = generate(model, [[3]], 8, get_strategy("edit", edit_passes=3), "1/1")
    assert free.tokens[0, :3].tolist() == [40, 41, 42]
    res = generate(model, [[3]], 8, get_strategy("edit", edit_passes=3, **rule), "1/1")
    assert res.tokens[0, :int(res.lengths[0])].tolist() == [10, 21, 12]
    assert res.nfe.tolist() == [7]  # 5 mask passes + the accepted pass + the rejected one (charged, then stop)
    c = res.trace.compact()
    assert c.row_events(6, 0)["replaced"].size == 0 and (c.replay() == res.tokens.numpy()).all()


def test_revert_margin_takes_back_a_pass_after_which_the_text_scores_lower(scripted):
    # pass 1 turns 11 into 21; the head that reads [10, 21, 12] wants [40, 41, 42], so it finds the new text
    # much less likely (mean log-probability about -10.0) than the head before found [10, 11, 12] (-3.3)
    model = scripted(replace_script({(10, 11, 12): (10, 21, 12), (10, 21, 12): (40, 41, 42)}))
    res = generate(model, [[3]], 8, get_strategy("edit", edit_passes=3, revert_margin=5.0), "1/1")
    assert res.tokens[0, :int(res.lengths[0])].tolist() == [10, 11, 12]
    assert res.nfe.tolist() == [7]  # 5 mask passes, the pass it took back, the pass that took it back
    c = res.trace.compact()
    assert c.events["reverted"].tolist() == [[6, 0, -1, 5]] and c.row_events(6, 0)["replaced"].size == 0
    assert (c.replay() == res.tokens.numpy()).all()
    wide = generate(model, [[3]], 8, get_strategy("edit", edit_passes=3, revert_margin=8.0), "1/1")
    assert wide.tokens[0, :3].tolist() == [40, 41, 42] and len(wide.trace.compact().events["reverted"]) == 0
    # a pass the next head agrees with scores higher and stays
    good = scripted(replace_script({(10, 11, 12): (10, 21, 12)}))
    res = generate(good, [[3]], 8, get_strategy("edit", edit_passes=3, revert_margin=0.0), "1/1")
    assert res.tokens[0, :3].tolist() == [10, 21, 12] and res.nfe.tolist() == [7]
    with pytest.raises(ValueError, match="revert_margin"):
        get_strategy("edit", revert_margin=-1.0).config.check(8, 8)


def test_revert_to_best_goes_back_over_several_small_steps(scripted):
    # each pass leaves one more token the next head disagrees with: mean log-probability about -3.3, -6.7,
    # -10.0 for the texts the three passes read; no step drops by 5, the third is 6.7 under the draft
    plan = {(10, 11, 12): (10, 21, 12), (10, 21, 12): (40, 41, 12), (40, 41, 12): (50, 51, 52)}
    model = scripted(replace_script(plan))
    previous = generate(model, [[3]], 8, get_strategy("edit", edit_passes=3, revert_margin=5.0), "1/1")
    assert previous.tokens[0, :3].tolist() == [50, 51, 52]
    res = generate(model, [[3]], 8, get_strategy("edit", edit_passes=3, revert_margin=5.0, revert_to="best"), "1/1")
    assert res.tokens[0, :int(res.lengths[0])].tolist() == [10, 11, 12] and res.nfe.tolist() == [8]
    c = res.trace.compact()
    assert c.events["reverted"].tolist() == [[7, 0, -1, 5]]  # pass 7 went back to the text before pass 5
    assert (c.replay() == res.tokens.numpy()).all()
    with pytest.raises(ValueError, match="revert_to"):
        get_strategy("edit", revert_to="first")


def test_max_change_fraction_rejects_the_first_pass_too(scripted):
    model = scripted(replace_script({(10, 11, 12): (30, 31, 12)}))
    res = generate(model, [[3]], 8, get_strategy("edit", edit_passes=3, max_change_fraction=0.5), "1/1")
    assert res.tokens[0, :3].tolist() == [10, 11, 12] and res.nfe.tolist() == [6]
    with pytest.raises(ValueError, match="max_change_fraction"):
        get_strategy("edit", max_change_fraction=0.0).config.check(8, 8)


def first_pass_script(cur=(), nxt=()):
    """Mask phase drafts [10, 11, 12]; on every draft both heads agree with it (no edit), except that the
    first edit pass also sees the ``(position or gap, token, logit)`` entries of ``cur`` and ``nxt``."""

    def edit_row(logits, nxt_logits, draft):
        for i, t in enumerate(draft):
            logits[i, t] = BIG
        for c, t in enumerate(draft + [EOS]):  # gap c comes before draft[c]: "no insertion" by default
            nxt_logits[c, t] = BIG
        if draft == [10, 11, 12]:
            for i, t, v in cur:
                logits[i, t] = v
            for c, t, v in nxt:
                nxt_logits[c, t] = v

    return row_script(edit_row)


def test_min_edit_confidence_keeps_unsure_replacements_and_inserts(scripted):
    # draft [10, 11, 12]: a sure insertion of 30 after 10, an unsure 11 -> 21 and an unsure 31 at the end
    # (21 barely above keeping 11: probability under one half; 31 against EOS at BIG)
    model = scripted(first_pass_script(cur=[(1, 21, BIG + 0.5)], nxt=[(1, 30, 2 * BIG), (3, 31, BIG + 0.5)]))
    free = generate(model, [[3]], 8, get_strategy("edit", edit_passes=3), "1/1")
    assert free.tokens[0, :int(free.lengths[0])].tolist() == [10, 30, 21, 12, 31]
    res = generate(model, [[3]], 8, get_strategy("edit", edit_passes=3, min_edit_confidence=0.7), "1/1")
    assert res.tokens[0, :int(res.lengths[0])].tolist() == [10, 30, 11, 12]
    c = res.trace.compact()
    assert c.row_events(5, 0)["replaced"].size == 0 and (c.replay() == res.tokens.numpy()).all()
    with pytest.raises(ValueError, match="min_edit_confidence"):
        get_strategy("edit", min_edit_confidence=1.5).config.check(8, 8)


def doubtful_draft_runner(scripted):
    """Draft [10, 11, 12]: 11 is doubted (probability ~0) but its replacement unsure (21 at ~0.55);
    12 keeps ~0.27 against a fairly sure 23 (the gap before it expects 23 too, also ~0.27 for 12); a sure
    30 in the gap after 10 (11 there ~0); EOS keeps ~0.38 against 31. Returns (run(**edit params), final)."""
    cur = [(1, 11, 0.0), (1, 21, BIG), (1, 22, BIG - 0.2), (2, 23, BIG + 1.0)]
    nxt = [(1, 30, 2 * BIG), (2, 23, BIG + 1.0), (3, 31, BIG + 0.5)]
    model = scripted(first_pass_script(cur, nxt))

    def run(**kw):
        return generate(model, [[3]], 8, get_strategy("edit", edit_passes=3, **kw), "1/1")

    return run, lambda res: res.tokens[0, :int(res.lengths[0])].tolist()


def test_keep_threshold_edits_only_where_the_head_doubts_the_present_text(scripted):
    run, final = doubtful_draft_runner(scripted)
    assert final(run()) == [10, 30, 21, 23, 31]
    assert final(run(min_edit_confidence=0.7)) == [10, 30, 11, 23]  # asks whether the proposal is sure
    res = run(keep_threshold=0.2)  # asks whether the present text is wrong
    assert final(res) == [10, 30, 21, 12]
    c = res.trace.compact()
    assert (c.replay() == res.tokens.numpy()).all()
    assert final(run(keep_threshold=0.3)) == [10, 30, 21, 23]
    with pytest.raises(ValueError, match="keep_threshold"):
        get_strategy("edit", keep_threshold=0.0).config.check(8, 8)


def test_insert_keep_threshold_sets_a_separate_bar_for_insertions(scripted):
    run, final = doubtful_draft_runner(scripted)
    assert final(run(keep_threshold=0.5)) == [10, 30, 21, 23, 31]
    res = run(keep_threshold=0.5, insert_keep_threshold=0.3)  # replacements as before, no insertion at the end
    assert final(res) == [10, 30, 21, 23]
    assert (res.trace.compact().replay() == res.tokens.numpy()).all()
    # the other way: 12 stays (~0.27 >= 0.2) while the gap before it, also ~0.27 against 23, takes 23
    assert final(run(keep_threshold=0.2, insert_keep_threshold=0.5)) == [10, 30, 21, 23, 12, 31]
    assert final(run(keep_threshold=0.2)) == [10, 30, 21, 12]
    with pytest.raises(ValueError, match="insert_keep_threshold"):
        get_strategy("edit", insert_keep_threshold=1.5).config.check(8, 8)
