"""Port of the Conv repo's R2FT fine-tuning loss (ybseo-ac/Conv: finetune_tools.py, the repeat-based
rejected sample and the loss after it; configs/config.yaml finetune.eos_p = 1, max_z = 50,
repeat_longer_than_x0 = False; scripts/r2ft_*.sh beta_w = beta_l = 1, beta_a = 0.1, gamma = 0), restated.

One example at a time, as the repo trains (batch 1, losses summed). The random draws use the given
torch generator in the repo's order: cut, phrase length, span length, phase, eos coin, eos position.
The model output goes through the SUBS parameterisation: the mask id is out of the softmax and a visible
position puts all its mass on its own token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rejected_sample(x0: torch.Tensor, P: int, n: int, gen: torch.Generator, eos_id: int, eos_p: float = 1.0,
                    max_g: int = 15, min_z: int = 30, max_z: int = 50):
    """x0 (L,) ids with the prompt in [0, P) and the answer (+ end-of-turn) in [P, P + n).
    -> cut c, the span [c, c + z), the loser (c + z,) ids (only the span matters)."""
    c = P + int(torch.randint(n, (1,), generator=gen))          # the repo: randint(b - a) + a
    g = int(torch.randint(1, max_g, (1,), generator=gen))        # phrase length 1..14
    z = int(torch.randint(min_z, max_z, (1,), generator=gen))    # span length 30..49
    g = min(g, c)  # the repo slices x[c - g: c]; its prompts are always longer than 14 tokens
    phrase = x0[c - g:c]
    phase = int(torch.randint(0, len(phrase), (1,), generator=gen))
    loser = torch.cat([x0[:c], torch.zeros(z, dtype=x0.dtype)])
    for i in range(c, c + z):
        loser[i] = phrase[(i + phase) % len(phrase)]
    if torch.rand(1, generator=gen).item() <= eos_p:
        loser[int(torch.randint(c, c + z - 1, (1,), generator=gen))] = eos_id
    return c, z, loser


def subs_logprobs(model, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(L,) input -> (L, V) log-probs under SUBS."""
    logits = model(xt[None]).logits[0].float()
    logits[:, mask_id] = float("-inf")
    logp = F.log_softmax(logits, dim=-1)
    visible = xt != mask_id
    logp[visible] = float("-inf")
    logp[visible, xt[visible]] = 0.0
    return logp


def r2ft_loss(model, examples, gen: torch.Generator, mask_id: int, eos_id: int,
              beta_w: float = 1.0, beta_l: float = 1.0, beta_a: float = 0.1, gamma: float = 0.0) -> torch.Tensor:
    """examples: [(x0 (L,), P, n)] - L covers the eos-padded answer. Everything from the cut on is masked
    (at least up to the end of the span); winner: the answer (+ end-of-turn) positions, normalised by n;
    loser: the span, normalised by z; per example -log sigmoid(bw W - bl L - gamma) - ba W, summed."""
    total = torch.zeros(())
    for x0, P, n in examples:
        c, z, loser = rejected_sample(x0, P, n, gen, eos_id)
        end = max(len(x0), c + z)
        x0 = torch.cat([x0, torch.full((end - len(x0),), eos_id, dtype=x0.dtype)])
        loser = torch.cat([loser, torch.full((end - len(loser),), eos_id, dtype=x0.dtype)])
        xt = x0.clone()
        xt[c:] = mask_id
        logp = subs_logprobs(model, xt, mask_id)
        answer = torch.zeros(end)
        answer[P:P + n] = 1
        span = torch.zeros(end)
        span[c:c + z] = 1
        lp_w = (logp.gather(1, x0[:, None])[:, 0] * answer).sum() / answer.sum()
        lp_l = (logp.gather(1, loser[:, None])[:, 0] * span).sum() / span.sum()
        total = total - torch.log(torch.sigmoid(beta_w * lp_w - beta_l * lp_l - gamma)) - beta_a * lp_w
    return total
