"""A small standalone port of ME-DLM's inference loop, to check the ``edit`` strategy's ``paper`` preset.

Written from the logic of ME-DLM's ``test.py`` (``mask_diffusion``, the pad strip in ``get_answer``,
``edit_diffusion``), for one sequence at a time: ME-DLM packs sequences with variable-length attention,
so each sequence is decoded independently, except that its growth cap (6144 tokens) is shared by the
pack; a pack of one makes that cap per sequence, which is what the strategy implements.

It shares no code with ``strategies/``: plain Python lists, one model call per pass on the unpadded
sequence. ``model_fn(ids: list[int]) -> (logits (T, V), next_logits (T, V))``, where ``next_logits[j]``
predicts the token that follows position j (ME-DLM's next-token head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PortResult:
    draft: list[int]  # the answer after the mask phase, pads stripped and the end-of-turn forced
    answer: list[int]  # the answer after the edit passes
    mask_passes: int
    fixed_step: int  # edit passes up to and including the first that changes nothing (all of them if none)
    real_steps: int  # ME-DLM's statistic: first pass whose heads both agree with the input everywhere


def mask_phase(model_fn, ids: list[int], waiting: list[bool], steps: int, *, pad_id: int, del_id: int) -> list[int]:
    """ME-DLM's mask phase: greedy, only <|del|> banned; each pass commits a fixed count of the waiting
    positions with the highest probability under a softmax that also excludes pad (a pad prediction
    scores 0). The count is n // steps, plus one on the first n % steps passes. Ties go to the lower
    position (ME-DLM's torch.topk leaves their order unspecified)."""
    ids, waiting = list(ids), list(waiting)
    base, extra = divmod(sum(waiting), steps)
    for step in range(steps):
        logits = model_fn(ids)[0].float().clone()
        logits[:, del_id] = float("-inf")
        pred = logits.argmax(-1)
        logits[:, pad_id] = float("-inf")
        score = torch.softmax(logits, -1).gather(-1, pred[:, None])[:, 0].tolist()
        order = sorted((i for i, w in enumerate(waiting) if w), key=lambda i: -score[i])
        for i in order[: base + (step < extra)]:
            ids[i], waiting[i] = int(pred[i]), False
    return ids


def edit_pass(model_fn, ids: list[int], is_prompt: list[bool], *, del_id: int, max_length: int):
    """One ME-DLM edit pass -> (ids, is_prompt, heads agreed with the input, nothing changed)."""
    logits, next_logits = model_fn(ids)
    cur = logits.argmax(-1).tolist()
    ahead = next_logits.argmax(-1).tolist()
    before = [ahead[-1]] + ahead[:-1]  # the token for the gap before j is predicted at j - 1 (a roll by one)
    for j, p in enumerate(is_prompt):  # the prompt is never edited and never receives insertions
        if p:
            cur[j] = before[j] = ids[j]
    agreed = cur == ids and before == ids
    kept = [j for j in range(len(ids)) if cur[j] != del_id]  # deletions first; their gaps go with them
    wants = [j for j in kept if before[j] != cur[j]]
    allowed = set(wants[: max_length - len(kept)])  # the growth cap keeps the first insertions
    out, out_prompt = [], []
    for j in kept:
        if j in allowed:
            out.append(before[j])
            out_prompt.append(False)
        out.append(cur[j])
        out_prompt.append(is_prompt[j])
    unchanged = len(kept) == len(ids) and not wants and all(cur[j] == ids[j] for j in kept)
    return out, out_prompt, agreed, unchanged


def medlm_infer(model_fn, prompt: list[int], init_num: int, mask_steps: int, edit_steps: int, *, mask_id: int,
                pad_id: int, del_id: int, eot_id: int, max_length: int = 6144) -> PortResult:
    """Decode one prompt as ME-DLM's test.py does: ``init_num`` masks, ``mask_steps`` mask passes, the pads
    stripped, the last token forced to end-of-turn (when there are edit passes), ``edit_steps`` edit passes."""
    if pad_id in prompt:
        raise ValueError("the port strips every pad, prompt included (as ME-DLM does): keep pads out of prompts")
    ids = list(prompt) + [mask_id] * init_num
    is_prompt = [True] * len(prompt) + [False] * init_num
    if mask_steps > 0:
        ids = mask_phase(model_fn, ids, [not p for p in is_prompt], mask_steps, pad_id=pad_id, del_id=del_id)
    keep = [j for j, t in enumerate(ids) if t != pad_id]
    ids, is_prompt = [ids[j] for j in keep], [is_prompt[j] for j in keep]
    if edit_steps > 0:
        ids[-1] = eot_id  # ME-DLM overwrites the last token, a prompt token when the answer is empty
    draft = [t for t, p in zip(ids, is_prompt) if not p]
    real_steps = fixed_step = edit_steps
    for step in range(edit_steps):
        ids, is_prompt, agreed, unchanged = edit_pass(model_fn, ids, is_prompt, del_id=del_id, max_length=max_length)
        if agreed and real_steps == edit_steps:
            real_steps = step + 1
        if unchanged and fixed_step == edit_steps:
            fixed_step = step + 1
    answer = [t for t, p in zip(ids, is_prompt) if not p]
    return PortResult(draft, answer, mask_steps, fixed_step, real_steps)
