"""Dream 7B's confidence-ordered unmasking (Ye et al., 2025, "Dream 7B"; HKUNLP/Dream ``diffusion_generate``).

Each pass predicts a token for every masked position (argmax, or a sample from the tempered, nucleus-
filtered softmax) and scores the position by ``alg``: ``entropy`` the negative entropy of that softmax
(sum p log p), ``topk_margin`` the gap between its two largest probabilities (Kim et al., 2025,
arXiv:2502.06768), ``maskgit_plus`` the predicted token's probability. A row then commits its
``k = floor(m * (1 - s / t))`` best-scoring masks (``m`` masks left; t > s consecutive points of
``linspace(1, eps, steps + 1)``), or ``k`` drawn without replacement from softmax(score / alg_temp);
the last step commits every mask left. The floor can leave a pass with nothing to commit (the first one
whenever steps > m * (1 - eps), as at budget 1/1): Dream charges such passes, and so do we.

Presets: ``paper`` is the Dream README's call (entropy, temperature 0.2, top_p 0.95, alg_temp 0, as its
HumanEval/MBPP evals run), ``paper-greedy`` its GSM8K/MATH/BBH setting (temperature 0); both ban nothing,
so a predicted mask id stays a mask and is ranked again. Budget mapping: Dream's ``steps`` = ceil(budget
* gen_length). Departures: Dream counts the batch's mean masks, we count each row's (a batch decodes as
its rows; the same whenever the rows hold equal counts, i.e. unless a predicted mask id is committed);
Dream's AR-initialised model reads position i's logits at i - 1, a model property this backbone lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from refinery.core.typed import ranged

from refinery.strategies.base import (DecodeContext, DecodeState, ForwardOutput, Preset, StepRecord, Strategy,
                                      StrategyConfig, commit)
from refinery.strategies.sampling import NEG_INF, ban_tokens, banned_ids, gumbel_argmax, select_topk


@dataclass(frozen=True)
class DreamConfig(StrategyConfig):
    alg: Literal["entropy", "topk_margin", "maskgit_plus"] = "entropy"  # what ranks the masked positions
    temperature: float = ranged(0.0, 0)  # token sampling temperature; 0 = argmax
    top_p: float = ranged(1.0, 0, 1, open="lo")  # nucleus, HF's rule (the token crossing top_p is kept); 1 = off
    alg_temp: float = ranged(0.0, 0)  # > 0: draw the positions from softmax(score / alg_temp), not the top k
    eps: float = ranged(1e-3, 0, 1, open="both")  # the schedule's last time point: t runs 1 -> eps
    bans: Literal["mask+delete", "mask", "none"] = "mask+delete"  # ids never predicted (Dream: none)


class DreamStrategy(Strategy):
    description = "Dream 7B: commit the masks whose predictions have the lowest entropy (or top-2 margin) first"
    config_class = DreamConfig
    presets = {
        "paper": Preset(dict(temperature=0.2, top_p=0.95, bans="none"),
                        "Dream README diffusion_generate (HKUNLP/Dream): alg entropy, temperature 0.2, top_p 0.95, "
                        "alg_temp 0, eps 1e-3, nothing banned; steps = budget*L"),
        "paper-greedy": Preset(dict(top_p=0.95, bans="none"),
                               "Dream eval scripts for GSM8K/MATH/BBH: the paper preset at temperature 0"),
        "project": Preset({}, "the defaults: greedy entropy order, mask and delete ids never predicted"),
    }

    def begin(self, ctx: DecodeContext, state: DecodeState) -> None:
        # float32 as Dream's timesteps, so floor(m * (1 - s/t)) rounds alike; on the CPU: one schedule on every device
        t = torch.linspace(1, self.config.eps, ctx.max_nfe + 1)
        share = 1 - t[1:] / t[:-1]
        share[-1] = 1.0  # the last step commits every mask left
        state.extra["share"] = share.to(state.x.device)

    def sure_passes(self, ctx: DecodeContext, state: DecodeState) -> int:
        # share < 1 before the last step, so floor(m * share) < m: every row keeps a mask until then
        return max(ctx.max_nfe - state.step, 0)

    def step(self, ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
        cfg = self.config
        share = state.extra["share"]
        s = min(state.step, len(share) - 1)
        masked = state.x[:, ctx.prompt_width:] == ctx.mask_id  # (B, L); a committed mask id counts again
        logits = ban_tokens(out.logits, banned_ids(cfg.bans, ctx.mask_id, ctx.delete_id))
        x0, score = predict_and_score(logits, cfg, ctx.generators)
        k = (masked.sum(1).float() * share[s]).long()  # floor, as Dream's int()
        score = torch.where(masked, score, NEG_INF)
        select = (select_topk(score, k) if cfg.alg_temp == 0
                  else sample_positions(score, k, cfg.alg_temp, ctx.generators, state.active))
        record = commit(ctx, state, select, x0, score)
        if s + 1 >= len(share):  # Dream's steps are spent: a committed mask id stays in the output
            state.active = torch.zeros_like(state.active)
        return record


def predict_and_score(logits: torch.Tensor, cfg: DreamConfig, generators: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``sample_tokens``: tokens from softmax(nucleus(logits / T)) (argmax at T = 0; a sample drawn by
    Gumbel-max on the row's stream otherwise) and the ``alg`` score of each position, both taken from that
    filtered softmax in float32. (B, L, V) -> (B, L) int64, (B, L) float32."""
    z = logits.float() / cfg.temperature if cfg.temperature > 0 else logits.float()
    if cfg.top_p < 1:
        z = nucleus_keep_crossing(z, cfg.top_p)
    probs = torch.softmax(z, dim=-1)
    x0 = gumbel_argmax(z, 1.0, generators) if cfg.temperature > 0 else z.argmax(-1)
    if cfg.alg == "entropy":
        # Dream adds 1e-10 inside the log (filtered tokens have p = 0); kept so near-ties order alike
        return x0, (probs * torch.log(probs + 1e-10)).sum(-1)
    if cfg.alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        return x0, top2[..., 0] - top2[..., 1]
    return x0, probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)


def nucleus_keep_crossing(z: torch.Tensor, top_p: float) -> torch.Tensor:
    """HF-style top-p as Dream applies it: keep the most probable tokens up to and including the first whose
    cumulative probability exceeds ``top_p``; the rest get the dtype's lowest value. ReMDM's rule
    (``sampling.nucleus_filter``) drops that crossing token, hence a separate function. (B, L, V) -> new."""
    ranked, order = z.sort(dim=-1, descending=True)
    mass_before = torch.softmax(ranked, dim=-1).cumsum(-1)
    drop = torch.zeros_like(mass_before, dtype=torch.bool)
    drop[..., 1:] = mass_before[..., :-1] > top_p  # a token goes once the ones above it already exceed top_p
    return z.masked_fill(drop.new_zeros(drop.shape).scatter(-1, order, drop), torch.finfo(z.dtype).min)


def sample_positions(score: torch.Tensor, k: torch.Tensor, alg_temp: float, generators: list,
                     active: torch.Tensor) -> torch.Tensor:
    """Dream's ``alg_temp`` > 0: ``k[b]`` positions drawn without replacement from softmax(score / alg_temp)
    (unmasked positions score -inf, so probability 0), on row b's own stream. (B, L), (B,) -> (B, L) bool."""
    probs = torch.softmax(score / alg_temp, dim=-1)
    select = torch.zeros_like(score, dtype=torch.bool)
    for b, n in enumerate(k.tolist()):  # one host sync; sampling runs only, never on the greedy path
        if n > 0 and bool(active[b]):
            select[b, torch.multinomial(probs[b], n, generator=generators[b])] = True
    return select
