"""ReMDM (Wang et al., 2025) as kuleshov-group/remdm's ``diffusion.py`` samples (``_ddpm_caching_update``).

Written from the reference's logic, for a model without time input (LLaDA's): S steps on the grid
t_i = linspace(1, eps, S + 1), dt = (1 - eps) / S; each step takes the SUBS distribution (mask logit -inf,
softmax; a decoded position's distribution is its own token), cuts it to ReMDM's nucleus, and draws one
categorical per position over "a token or the mask" with weights:
  decoded: token (1 - sigma), mask sigma;
  masked:  token p * (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t),
           mask (1 - alpha_s - sigma alpha_t) / (1 - alpha_t);
drawn as argmax(q / (1e-10 - log(u + 1e-10))) in float64. sigma per sampler: cap min(eta, (1 - alpha_s) /
alpha_t), rescale eta * sigma_max, conf softmax(-p of each decoded token) * sigma_max, loop: MDLM (sigma 0)
outside (t_off, t_on] with the piecewise alphas chosen by t, ReMDM with alpha = alpha_on and sigma = eta
inside. After the S steps, noise removal writes the argmax wherever a mask is left.

The reference generates unconditionally; here the prompt columns are held fixed (never re-masked), the
sampler acting on the generation region only.
"""

from __future__ import annotations

import torch

EPS = 1e-5


def nucleus(p: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1:
        return p
    sp, idx = p.sort(-1, descending=True)
    keep = sp.cumsum(-1) <= top_p
    keep[..., 0] = True
    sp = sp * keep
    sp = sp / sp.sum(-1, keepdim=True)
    return torch.zeros_like(p).scatter_(-1, idx, sp)


def sample(q: torch.Tensor, rand) -> torch.Tensor:
    q = q.double()
    return (q / (1e-10 - (rand(q.shape, dtype=torch.float64) + 1e-10).log())).argmax(-1)


def loop_alphas(t: float, dt: float, t_on: float, t_off: float, alpha_on: float):
    if t > t_on:
        return 1 - (1 - t) * alpha_on / (1 - t_on), 1 - (1 - t + dt) * alpha_on / (1 - t_on)  # move chances
    if t <= t_off:
        return t * (1 - alpha_on) / t_off, (t - dt) * (1 - alpha_on) / t_off
    return None


@torch.no_grad()
def generate(model, prompt: torch.Tensor, *, gen_length: int, steps: int, mask_id: int, sampler: str = "loop",
             eta: float = 0.02, top_p: float = 0.9, t_on: float = 0.55, t_off: float = 0.05, alpha_on: float = 0.9,
             attention_mask=None, rand=torch.rand) -> torch.Tensor:
    """prompt (B, P) -> (B, P + gen_length) canvas after ``steps`` steps and the noise-removal pass."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=torch.long)], 1)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype)], 1)
    ts = torch.linspace(1, EPS, steps + 1)
    dt = (1 - EPS) / steps
    conf = torch.full((B, gen_length), -torch.inf)
    for i in range(steps):
        t = float(ts[i])
        logits = model(x, attention_mask=attention_mask).logits[:, P:].double()
        logits[..., mask_id] = -torch.inf
        p = nucleus(logits.softmax(-1), top_p)
        xr = x[:, P:]
        decoded = xr != mask_id
        p = torch.where(decoded[..., None], torch.nn.functional.one_hot(xr, p.shape[-1]).double(), p)
        a_t, a_s = 1 - t, 1 - (t - dt)
        sigma = torch.zeros(B, gen_length, dtype=torch.float64)
        if sampler == "loop":
            chances = loop_alphas(t, dt, t_on, t_off, alpha_on)
            if chances is None:
                a_t = a_s = alpha_on
                sigma += eta
            else:
                a_t, a_s = 1 - chances[0], 1 - chances[1]
        elif sampler == "cap":
            sigma += min(eta, (1 - a_s) / a_t) if a_t > 0 else eta
        else:
            smax = min(1.0, (1 - a_s) / a_t) if a_t > 0 else 1.0
            if sampler == "rescale":
                sigma += eta * smax
            else:  # conf
                sigma = torch.where(decoded, conf.double().softmax(-1), 0.0) * smax
        keep = p * (1 - sigma[..., None])
        keep[..., mask_id] = sigma
        fill = p * ((a_s - (1 - sigma[..., None]) * a_t) / (1 - a_t))
        fill[..., mask_id] = (1 - a_s - sigma * a_t) / (1 - a_t)
        new = sample(torch.where(decoded[..., None], keep, fill), rand)
        if sampler == "conf":
            unmasked = ~decoded & (new != mask_id)
            conf = torch.where(unmasked, -p.gather(-1, new[..., None])[..., 0].float(), conf)
            conf = torch.where(decoded & (new == mask_id), -torch.inf, conf)
        x[:, P:] = new
    logits = model(x, attention_mask=attention_mask).logits[:, P:]
    logits[..., mask_id] = -torch.inf
    x[:, P:] = torch.where(x[:, P:] == mask_id, logits.argmax(-1), x[:, P:])
    return x
