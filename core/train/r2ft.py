"""R2FT, rejective fine-tuning (Seo et al., 2025, "Fast and fluent diffusion language models via
convolutional decoding and rejective fine-tuning").

Masked diffusion LMs decoded with few passes tend to repeat recent context. R2FT shows the model a
*suffix-masked* answer and prefers the true suffix (winner) over a rule-made repetitive one (loser):
the loser tiles the last n tokens before the suffix across the whole suffix, n drawn from
``repeat_ns``. Both are scored from the same masked input, so one forward pass serves both:

    LP_w = log p(winner suffix | masked input),  LP_l = log p(loser suffix | masked input)
    loss = -log sigmoid(beta_w * LP_w - beta_l * LP_l - gamma) - beta_a * LP_w

(``lp_reduction`` "mean" averages the per-token log-probs over the suffix, "sum" adds them.) The suffix
covers a fraction U(min_suffix_frac, 1) of the eos-padded response; the prompt is never masked.

``rejected: phrase_span`` builds the loser as the Conv repo's R2FT fine-tuning does (``recipe: conv-paper``;
``q_xt_finetune_repeat``): per row, cut the answer (response + <|eot_id|>, n tokens) at c = P + U{0..n-1},
mask everything from c on; the loser repeats the phrase of g ~ U{1..14} tokens that ends at c, starting at a
random phase, over a span of z ~ U{30..49} tokens from c, and with probability ``eos_prob`` one eos is written
at a position U{c..c+z-2}. The masked tail reaches at least c + z so the whole span is predicted. With
``lp_reduction: length`` the winner's log-prob (its masked tokens) is divided by n and the loser's by z;
``batch_reduction: sum`` adds the row losses; ``ban_mask_logit`` takes the mask id out of the softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refinery.core.train.config import TrainConfig
from refinery.core.train.data import ChatBatch, to_device
from refinery.core.train.objectives import LossOutput, Selection


def suffix_and_loser(batch: ChatBatch, frac: torch.Tensor, ns: torch.Tensor):
    """suffix (B, T) bool: the masked suffix of each padded response; loser (B, T): the winner's ids with
    the suffix replaced by the last n[b] tokens before it, tiled. frac (B,) in (0, 1]; ns (B,) >= 1."""
    ids = batch.input_ids
    B, T = ids.shape
    P = batch.prompt_len
    R = batch.response_mask.sum(1)
    start = P + torch.minimum((R.float() * (1 - frac)).floor().long(), R - 1)  # at least one suffix token
    pos = torch.arange(T, device=ids.device)[None, :]
    suffix = (pos >= start[:, None]) & batch.response_mask
    n = torch.minimum(ns.to(ids.device), start)  # never reach before the first token
    src = start[:, None] - n[:, None] + (pos - start[:, None]).clamp(min=0) % n[:, None]
    loser = torch.where(suffix, ids.gather(1, src.clamp(0, T - 1)), ids)
    return suffix, loser


@dataclass
class Pair:
    """One R2FT forward's inputs and both candidates, on the host. xt, attention (B, W): the masked input;
    win, lose (B, W) bool: the positions scored for the winner / loser; winner, loser (B, W): their target ids;
    win_len (B,): the winner's length for ``lp_reduction: length``."""

    xt: torch.Tensor
    attention: torch.Tensor
    win: torch.Tensor
    winner: torch.Tensor
    lose: torch.Tensor
    loser: torch.Tensor
    win_len: torch.Tensor


def phrase_span_pair(batch: ChatBatch, r, mask_id: int, eos_id: int, gen: torch.Generator) -> Pair:
    """The Conv repo's rejected sample (module docstring). Per row the draws are, in order: cut, phrase length,
    span length, phase, eos coin, eos position (the last only when the coin says so)."""
    host = batch.on_host()  # lengths and ids from the CPU batch: no device reads
    ids, P, n = host.input_ids, host.prompt_len, host.target_len
    B, T = ids.shape
    ends = (P + host.response_mask.sum(1)).tolist()
    draws = []
    for b in range(B):
        c = int(P[b]) + int(torch.randint(int(n[b]), (1,), generator=gen))
        g = min(int(torch.randint(r.phrase_len[0], r.phrase_len[1] + 1, (1,), generator=gen)), c)  # inside the row
        z = int(torch.randint(r.span_len[0], r.span_len[1] + 1, (1,), generator=gen))
        phase = int(torch.randint(g, (1,), generator=gen))
        eos_at = int(torch.randint(c, c + z - 1, (1,), generator=gen)) \
            if torch.rand(1, generator=gen).item() <= r.eos_prob else None
        draws.append((c, g, z, phase, eos_at))
    W = max(T, max(c + z for c, _, z, _, _ in draws))
    x0 = torch.full((B, W), eos_id, dtype=torch.long)
    x0[:, :T] = ids
    pos = torch.arange(W)
    xt, loser = x0.clone(), x0.clone()
    attention, win, lose = (torch.zeros(B, W, dtype=torch.bool) for _ in range(3))
    for b, (c, g, z, phase, eos_at) in enumerate(draws):
        end = max(ends[b], c + z)
        xt[b, c:end] = mask_id
        attention[b, :end] = True
        win[b, c:int(P[b] + n[b])] = True
        lose[b, c:c + z] = True
        span = pos[c:c + z]
        loser[b, c:c + z] = x0[b, c - g + (span + phase) % g]  # phase counted from the row start, as the repo
        if eos_at is not None:
            loser[b, eos_at] = eos_id
    return Pair(xt, attention, win, x0, lose, loser, n)


def suffix_tile_pair(batch: ChatBatch, r, mask_id: int, gen: torch.Generator) -> Pair:
    """The project's loser (module docstring): the suffix is scored for both candidates. Built on the host."""
    host = batch.on_host()
    B = host.input_ids.shape[0]
    frac = r.min_suffix_frac + (1 - r.min_suffix_frac) * torch.rand(B, generator=gen)
    ns = torch.tensor(r.repeat_ns)[torch.randint(len(r.repeat_ns), (B,), generator=gen)]
    suffix, loser = suffix_and_loser(host, frac, ns)
    xt = torch.where(suffix, torch.full_like(host.input_ids, mask_id), host.input_ids)
    return Pair(xt, host.attention_mask, suffix, host.input_ids, suffix, loser, host.target_len)


def pair_logprobs(logits: torch.Tensor, pair: Pair, reduction: str, mask_id: int = -1):
    """Per-row log-probs (B,) of winner and loser over their positions; logits (B, W, V) on the device, ``pair``
    on the host (the positions are indexed from there, so nothing waits on the device). mask_id >= 0 takes
    that id out of the softmax."""
    dev, B = logits.device, logits.shape[0]
    scored = pair.win | pair.lose
    logp = vocab_logprobs(Selection.of(scored, dev).take(logits), mask_id)  # (M, V): only the scored positions
    rows = scored.nonzero()[:, 0]
    out = []
    for where, target in ((pair.win, pair.winner), (pair.lose, pair.loser)):
        keep = where[scored]
        picked = logp.index_select(0, to_device(keep.nonzero().squeeze(1), dev))
        tok = picked.gather(1, to_device(target[where][:, None], dev)).squeeze(1)
        out.append(row_sums(tok, rows[keep], B))
    return reduce_pair_logprobs(*out, pair.win_len, reduction)


def vocab_logprobs(sel: torch.Tensor, mask_id: int = -1) -> torch.Tensor:
    """Log-softmax in fp32 over the vocabulary of selected logits (M, V) -> (M, V); mask_id >= 0 takes that id
    out. ``sel`` must be a fresh selection (fp32 logits are written in place: no second (M, V) copy)."""
    sel = sel.float()
    if mask_id >= 0:
        sel[:, mask_id] = float("-inf")
    return F.log_softmax(sel, dim=-1)


def reduce_pair_logprobs(winner: tuple, loser: tuple, win_len: torch.Tensor, reduction: str):
    """(log-prob sum, token count) per row, each (B,), of winner and loser -> their (B,) log-probs under
    ``reduction``: "mean" per scored token, "length" the winner's over ``win_len`` (B,) on the host, "sum" as is."""
    (lp_w, n_w), (lp_l, n_l) = winner, loser
    if reduction == "mean":
        return lp_w / n_w.clamp(min=1), lp_l / n_l.clamp(min=1)
    if reduction == "length":
        return lp_w / to_device(win_len, lp_w.device).to(lp_w.dtype).clamp(min=1), lp_l / n_l.clamp(min=1)
    return lp_w, lp_l


def row_sums(tok: torch.Tensor, rows: torch.Tensor, B: int):
    """Per-row sums of the log-probs ``tok`` (M,) and the counts, both (B,); ``rows`` (M,) on the host."""
    total = torch.zeros(B, device=tok.device, dtype=tok.dtype).index_add_(0, to_device(rows, tok.device), tok)
    return total, to_device(torch.bincount(rows.cpu(), minlength=B), tok.device).to(tok.dtype)


class R2FTObjective:
    kind = "chat"

    def __init__(self, cfg: TrainConfig, special: dict):
        self.cfg, self.mask_id, self.eos_id = cfg, special["mask_token_id"], special["eos_token_id"]

    def loss(self, model, batch: ChatBatch, gen: torch.Generator, step: int) -> LossOutput:
        r = self.cfg.r2ft
        pair = phrase_span_pair(batch, r, self.mask_id, self.eos_id, gen) if r.rejected == "phrase_span" \
            else suffix_tile_pair(batch, r, self.mask_id, gen)
        dev = batch.input_ids.device
        out = model(to_device(pair.xt, dev), attention_mask=to_device(pair.attention, dev), compute_next=False)
        lp_w, lp_l = pair_logprobs(out.logits, pair, r.lp_reduction, self.mask_id if r.ban_mask_logit else -1)
        pref = -F.logsigmoid(r.beta_w * lp_w - r.beta_l * lp_l - r.gamma)
        rows = pref - r.beta_a * lp_w
        loss = rows.sum() if r.batch_reduction == "sum" else rows.mean()
        metrics = {"lp_w": lp_w.detach().mean(), "lp_l": lp_l.detach().mean(), "loss_pref": pref.detach().mean(),
                   "suffix_tokens": float(pair.win.sum())}  # device scalars: the trainer reads them once per step
        return LossOutput(loss, metrics, int(pair.attention.sum()))
