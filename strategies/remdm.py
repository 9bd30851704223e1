"""ReMDM (Wang et al., 2025): remasking samplers that let committed tokens be revised.

LLaDA has no time input, so time is the pass index: t = 1 - i/S, s = 1 - (i+1)/S, and
alpha_t = 1 - t (the linear schedule LLaDA was trained with). One step from t to s (ReMDM Eq. 6):

- a decoded token is re-masked with probability sigma_t (the carry-over of the MDLM posterior
  becomes "keep with probability 1 - sigma_t");
- a masked position is unmasked with probability (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t),
  its token drawn from the model (mask logit set to -inf).

Schedules for sigma_t, with sigma_max = min(1, (1 - alpha_s) / alpha_t):
``cap`` min(eta, sigma_max); ``rescale`` eta * sigma_max; ``conf`` sigma_max spread over decoded
positions by softmax(-confidence when decoded); ``loop``: alpha rises linearly to ``alpha_on`` until
``t_on``, stays there while tokens are re-masked with sigma = eta until ``t_off``, then rises to 1.
The final pass always goes to alpha = 1 without re-masking, so no mask survives.

``timing="reference"`` runs ReMDM's own clock (kuleshov-group/remdm ``diffusion.py``): with N passes it
takes S = N - 1 steps on t_i = 1 - i (1 - 1e-5) / S, s = t - (1 - 1e-5) / S, the loop's phase decided by t
alone (both alphas from t's piece), then one noise-removal pass that writes the argmax at every position
still masked. Budget mapping: ReMDM's ``sampling_steps`` T = ceil(budget * gen_length) - 1 (+1 noise-removal
forward). Presets: ``paper`` (loop), ``paper-cap``, ``paper-rescale``, ``paper-conf`` use the scripts'
settings: tokens sampled at temperature 1 from the nucleus p = 0.9 (ReMDM's cut: keep tokens whose
cumulative probability stays <= p, the top one always), eta 0.02 / 0.008 / 0.015 (conf has none), t_on
0.55, t_off 0.05, alpha_on 0.9; only the mask id is banned (SUBS). ``project`` is the dataclass default.
Applied to a prompted model, the prompt is never re-masked (ReMDM's scripts generate unconditionally).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from refinery.core.typed import ranged
from refinery.core.types import StepRecord
from refinery.strategies.base import DecodeContext, DecodeState, ForwardOutput, Preset, Strategy, StrategyConfig, commit
from refinery.strategies.registry import register
from refinery.strategies.sampling import ban_tokens, banned_ids, nucleus_filter, predict, uniform_rand

EPS = 1e-5  # ReMDM's last time point: its grid runs from t = 1 to t = EPS


def _paper(schedule: str, eta: float, script: str) -> Preset:
    params = dict(schedule=schedule, temperature=1.0, top_p=0.9, timing="reference", bans="mask")
    if schedule != "conf":
        params["eta"] = eta
    return Preset(params, f"ReMDM (kuleshov-group/remdm diffusion.py, scripts/{script}): nucleus p=0.9 sampling"
                          + (f", eta={eta}" if schedule != "conf" else "") + ", ReMDM's time grid and final "
                          "noise-removal argmax pass (T = budget*L - 1 steps)")


@dataclass(frozen=True)
class RemdmConfig(StrategyConfig):
    schedule: Literal["cap", "rescale", "conf", "loop"] = "loop"  # how sigma_t is chosen
    eta: float = ranged(0.04, 0, 1)  # remasking strength
    t_on: float = 0.55  # loop: remasking phase starts when t falls to t_on
    t_off: float = 0.05  # loop: ... and ends at t_off (must be < t_on)
    alpha_on: float = 0.9  # loop: fraction decoded during the remasking phase
    temperature: float = ranged(0.0, 0)  # Gumbel temperature of token choices; unmask/remask draws always sampled
    top_p: float = ranged(1.0, 0, 1, open="lo")  # nucleus for the token choice (ReMDM's cut); 1 = the full distribution
    timing: Literal["project", "reference"] = "project"  # our pass clock, or ReMDM's grid + noise-removal pass
    bans: Literal["mask+delete", "mask", "none"] = "mask+delete"  # ids never predicted (ReMDM: the mask id)

    def check(self, gen_length: int, max_nfe: int) -> None:
        super().check(gen_length, max_nfe)
        if self.schedule == "loop":
            if not 0.0 <= self.t_off < self.t_on <= 1.0:
                raise ValueError(f"t_off={self.t_off} must be < t_on={self.t_on}, both in [0, 1]")
            if not 0.0 < self.alpha_on < 1.0:
                raise ValueError(f"alpha_on={self.alpha_on} must lie in (0, 1)")


@register("remdm")
class RemdmStrategy(Strategy):
    description = "ReMDM: also re-mask committed tokens so they can be revised (cap / rescale / conf / loop)"
    config_class = RemdmConfig
    presets = {
        "paper": _paper("loop", 0.02, "remdm-loop.sh"),
        "paper-cap": _paper("cap", 0.008, "remdm-cap.sh"),
        "paper-rescale": _paper("rescale", 0.015, "remdm-rescale.sh"),
        "paper-conf": _paper("conf", 0.0, "remdm-conf.sh"),
        "project": Preset({}, "the defaults: greedy tokens, eta 0.04 for every schedule, the last of the N passes "
                              "goes to alpha = 1; mask and delete ids never predicted"),
    }
    # Re-masking may hit any region column, so only the prompt's keys and values can be kept (a dual cache has
    # no fixed columns beyond them): every pass recomputes the whole region.
    cache_modes = ("none", "prefix")
    no_cache_reason = ("re-masking may hit any region column, so no column beyond the prompt stays fixed for a "
                       "dual cache; use cache='prefix'")

    def min_passes(self, gen_length: int) -> int:
        return 2

    def sure_passes(self, ctx: DecodeContext, state: DecodeState) -> int:
        return ctx.max_nfe - state.step  # ReMDM always runs its S passes

    def begin(self, ctx: DecodeContext, state: DecodeState) -> None:
        state.extra["psi"] = torch.zeros(state.x.shape[0], ctx.gen_length, device=state.x.device)

    def alpha(self, t: float) -> float:
        c = self.config
        if c.schedule != "loop":
            return 1.0 - t
        if t > c.t_on:
            return (1.0 - t) * c.alpha_on / (1.0 - c.t_on)
        if t > c.t_off:
            return c.alpha_on
        return 1.0 - t * (1.0 - c.alpha_on) / c.t_off if c.t_off > 0 else 1.0

    def alpha_pair(self, t: float, s: float) -> tuple[float, float]:
        """(alpha_t, alpha_s) of ReMDM's reference clock: the loop's piece is chosen by t for both."""
        c = self.config
        if c.schedule != "loop":
            return 1.0 - t, 1.0 - s
        if t > c.t_on:
            return (1.0 - t) * c.alpha_on / (1.0 - c.t_on), (1.0 - s) * c.alpha_on / (1.0 - c.t_on)
        if t <= c.t_off:
            return 1.0 - t * (1.0 - c.alpha_on) / c.t_off, 1.0 - s * (1.0 - c.alpha_on) / c.t_off
        return c.alpha_on, c.alpha_on

    def clock(self, S: int, i: int) -> tuple[float, float, float, float, bool]:
        """(t, s, alpha_t, alpha_s, last) of pass i of S."""
        if self.config.timing == "project":
            t, s = 1.0 - i / S, 1.0 - (i + 1) / S
            last = i == S - 1
            return t, s, self.alpha(t), (1.0 if last else self.alpha(s)), last
        if i == S - 1:  # the noise-removal pass
            return EPS, 0.0, 1.0, 1.0, True
        dt = (1.0 - EPS) / (S - 1)
        t = 1.0 - i * dt
        return (t, t - dt, *self.alpha_pair(t, t - dt), False)

    def sigma(self, t: float, a_t: float, a_s: float, decoded: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """(B, L) remasking probability of each decoded position."""
        c = self.config
        sigma_max = min(1.0, (1.0 - a_s) / a_t) if a_t > 0 else 0.0
        if c.schedule == "loop":
            value = c.eta if c.t_off < t <= c.t_on else 0.0
        elif c.schedule == "cap":
            value = min(c.eta, sigma_max)
        elif c.schedule == "rescale":
            value = c.eta * sigma_max
        else:  # conf: least confident decoded tokens are the likeliest to go back
            w = torch.where(decoded, -psi, float("-inf")).softmax(-1).nan_to_num(0.0)
            return w * sigma_max
        return torch.full_like(psi, value)

    def step(self, ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
        cfg = self.config
        t, s, a_t, a_s, last = self.clock(ctx.max_nfe, state.step)
        region = state.x[:, ctx.prompt_width:]
        masked = region == ctx.mask_id
        psi = state.extra["psi"]
        sigma = torch.zeros_like(psi) if last else self.sigma(t, a_t, a_s, ~masked, psi)
        p_unmask = ((a_s - (1.0 - sigma) * a_t) / (1.0 - a_t)).clamp(0.0, 1.0) if a_t < 1 else torch.ones_like(psi)
        u = uniform_rand(psi.shape, ctx.generators, psi.device)
        unmask = masked & ((u < p_unmask) | last)
        remask = ~masked & (u < sigma)
        logits = ban_tokens(out.logits, banned_ids(cfg.bans, ctx.mask_id, ctx.delete_id))
        if last and cfg.timing == "reference":  # noise removal: the argmax, no sampling
            x0, conf = predict(logits, 0.0, ctx.generators, where=masked)
        else:
            x0, conf = predict(nucleus_filter(logits, cfg.top_p), cfg.temperature, ctx.generators, where=masked)
        psi.copy_(torch.where(unmask, conf, psi))
        record = commit(ctx, state, unmask, x0, conf, remask=remask)
        state.active = torch.full_like(state.active, not last)  # ReMDM always runs its S passes
        return record
