"""Port of ME-DLM's Stage 2-3 losses (renhouxing/ME-DLM: utils/edit_trainer.py's collator, construct_inputs
and compute_loss; models/llada's loss lines; utils/edit_cpp_helper/edit.cpp's labels), restated here.

ME-DLM packs a micro-batch's examples into one stream (varlen attention: each example sees only itself)
and draws one t for the whole stream. Labels are -100 except where something is learned; each head's
loss is the mean cross-entropy over its labelled positions (PyTorch's default reduction), and the step
loss is (cur + next) / t. Nothing here imports the code under test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def forward_each(model, streams: list[torch.Tensor]):
    """One forward per example (the varlen packing's attention), logits of both heads concatenated into the
    packed stream. streams: list of (n_i,) ids -> cur (N, V), nxt (N, V), N = sum n_i."""
    cur, nxt = [], []
    for ids in streams:
        out = model(ids[None], compute_next=True)
        cur.append(out.logits[0])
        nxt.append(out.next_logits[0])
    return torch.cat(cur), torch.cat(nxt)


def two_head_loss(model, streams, cur_labels, t: float) -> torch.Tensor:
    """(mean CE of the output head + mean CE of the next-token head) / t over the packed stream; the
    next-token labels are the current ones moved one place left (position i learns what fills i + 1)."""
    cur_logits, nxt_logits = forward_each(model, streams)
    labels = torch.cat(cur_labels)
    nxt_labels = labels.roll(-1)
    cur = F.cross_entropy(cur_logits.float(), labels, ignore_index=IGNORE)
    nxt = F.cross_entropy(nxt_logits.float(), nxt_labels, ignore_index=IGNORE)
    return (cur + nxt) / t


def mask_step_loss(model, examples, uniforms, t: float, mask_id: int) -> torch.Tensor:
    """A 'mask' micro-batch. examples: [(prompt_len, ids (n,))] with ids = prompt + padded response;
    uniforms: [(n,)] in [0, 1) - a position is masked when its uniform is below t (Bernoulli(t)) and it is
    labelled: the prompt and the token right after it never are."""
    streams, labels = [], []
    for (P, ids), u in zip(examples, uniforms):
        lab = ids.clone()
        lab[:P + 1] = IGNORE
        masked = (u < t) & (lab != IGNORE)
        streams.append(torch.where(masked, torch.full_like(ids, mask_id), ids))
        labels.append(torch.where(masked, lab, torch.full_like(lab, IGNORE)))
    return two_head_loss(model, streams, labels, t)


def edit_labels(noisy: list[int], clean: list[int], del_id: int, eos_id: int) -> tuple[list[int], list[int]]:
    """ME-DLM's labels for a draft ``noisy`` against ``clean``: (token targets (n,), gap targets (n + 1,)).

    Levenshtein table, then a backtrace from the end preferring keep, replace, delete, insert. A token's
    target is itself, its replacement or del_id; gap g (before noisy[g]) gets the first token inserted there.
    Then, left to right: an insertion equal to the next token's target moves one gap right; an empty gap
    takes the target of the next surviving token (eos_id past the end), except right after a deleted token
    where it stays unlabelled; the last gap is eos_id when still empty."""
    n, m = len(noisy), len(clean)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            same = noisy[i - 1] == clean[j - 1]
            d[i][j] = min(d[i - 1][j - 1] + (0 if same else 1), d[i - 1][j] + 1, d[i][j - 1] + 1)
    ops, i, j = [], n, m
    while i > 0 or j > 0:
        if i and j and noisy[i - 1] == clean[j - 1] and d[i][j] == d[i - 1][j - 1]:
            ops.append(("keep", None)); i -= 1; j -= 1  # noqa: E702
        elif i and j and d[i][j] == d[i - 1][j - 1] + 1:
            ops.append(("replace", clean[j - 1])); i -= 1; j -= 1  # noqa: E702
        elif i and d[i][j] == d[i - 1][j] + 1:
            ops.append(("delete", None)); i -= 1  # noqa: E702
        else:
            ops.append(("insert", clean[j - 1])); j -= 1  # noqa: E702
    tok, gaps, pos = list(noisy), [[] for _ in range(n + 1)], 0
    for kind, value in reversed(ops):
        if kind == "insert":
            gaps[pos].append(value)
            continue
        if kind == "replace":
            tok[pos] = value
        elif kind == "delete":
            tok[pos] = del_id
        pos += 1
    gap = [g[0] if g else IGNORE for g in gaps]
    for k in range(n):
        if k + 1 < n and gap[k + 1] != IGNORE and tok[k + 1] == gap[k + 1] and k + 2 < n + 1:
            gap[k + 1], gap[k + 2] = gap[k + 2], gap[k + 1]
        if gap[k] == IGNORE and (k == 0 or tok[k - 1] != del_id):
            follow = next((x for x in tok[k:] if x != del_id), eos_id)
            gap[k] = follow
    if gap[-1] == IGNORE:
        gap[-1] = eos_id
    return tok, gap


def draft_step_loss(model, examples, t: float, del_id: int, eos_id: int) -> torch.Tensor:
    """An 'intermediate' micro-batch after the rollout. examples: [(prompt (P,), draft (n,), truth (m,))], the
    draft and truth without pads, both ending with end-of-turn. Labels over the draft and truth minus their
    last token; the last draft token learns eos_id and its gap nothing; gap 0 sits on the last prompt token."""
    streams, cur_labels, gap_labels = [], [], []
    for prompt, draft, truth in examples:
        P = len(prompt)
        streams.append(torch.as_tensor(list(prompt) + list(draft)))
        tok, gap = edit_labels(list(draft[:-1]), list(truth[:-1]), del_id, eos_id)
        cur_labels.append(torch.as_tensor([IGNORE] * P + tok + [eos_id]))
        gap_labels.append(torch.as_tensor([IGNORE] * (P - 1) + gap + [IGNORE]))  # gap g on position P - 1 + g
    cur_logits, nxt_logits = forward_each(model, streams)
    cur = F.cross_entropy(cur_logits.float(), torch.cat(cur_labels), ignore_index=IGNORE)
    nxt = F.cross_entropy(nxt_logits.float(), torch.cat(gap_labels), ignore_index=IGNORE)
    return (cur + nxt) / t
