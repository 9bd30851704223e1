"""Convolutional decoding's stochastic sampler (Seo et al., 2025) as the Conv repo runs it
(``r2ft_tools._ddpm_convolution_update`` called from ``generate_yb`` with decode_type "conv").

Written from the reference's logic: S steps on t_i = linspace(1, eps, S + 1), dt = (1 - eps) / S. A step
takes the SUBS distribution (mask logit pushed down, log-softmax), its top k + 1 probabilities, and a gate
tanh(conv_mult * box(decoded)) from a box kernel of odd width (kernel size made odd) over the whole canvas,
prompt included. A per-row constant c = #masked / sum over masked of (gate * sum of the k + 1 top
probabilities) scales every weight; weights are top_j * c * gate * (t - s) for the first k candidates, and
the (k+1)-th column is overwritten by s ("stay masked"). One sample per position, argmax(q / (1e-10 -
log(u + 1e-10))^T); decoded positions keep their token. No final commit: the loop just ends.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5


@torch.no_grad()
def generate(model, prompt: torch.Tensor, *, gen_length: int, steps: int, mask_id: int, kernel_size: int = 128,
             k: int = 1, conv_mult: float = 1.0, temperature: float = 1.0, rand=torch.rand,
             noise_dtype=torch.float32) -> torch.Tensor:
    """prompt (B, P) -> (B, P + gen_length) canvas. The reference draws float32 noise (``noise_dtype``)."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=torch.long)], 1)
    ts = torch.linspace(1, EPS, steps + 1)
    dt = (1 - EPS) / steps
    size = kernel_size + (kernel_size % 2 == 0)
    kernel = torch.ones(1, 1, size)
    for i in range(steps):
        t = float(ts[i])
        logits = model(x).logits.float()
        logits[..., mask_id] -= 99999.0
        p = logits.log_softmax(-1).exp()
        top, ids = p.topk(k + 1, dim=-1)
        masked = x == mask_id
        gate = torch.tanh(F.conv1d((~masked).float()[:, None], kernel, padding=(size - 1) // 2)[:, 0] * conv_mult)
        c = masked.sum(-1).float() / ((top.sum(-1) * gate * masked).sum(-1) + 1e-12)
        q = top * (gate * c[:, None])[..., None] * (t - (t - dt))
        q[..., -1] = t - dt
        ids[..., -1] = mask_id
        noise = (1e-10 - (rand(q.shape, dtype=noise_dtype) + 1e-10).log()) ** temperature
        pick = ids.gather(-1, (q / noise).argmax(-1, keepdim=True))[..., 0]
        x = torch.where(masked, pick, x)
    return x
