"""LLaDA's sampler as its ``generate.py`` runs it (Nie et al., 2025, Algorithm 4/5 with semi-AR blocks).

Written from the reference's logic: the canvas is prompt + ``gen_length`` masks; the generation is split
into blocks, ``steps`` evenly over them (both must divide, else the reference refuses); each block
precomputes how many tokens each step transfers (the linear schedule: the block's masks // steps, the
remainder to the first steps). A step predicts every position (argmax of Gumbel-noised logits),
scores masked positions up to the end of the current block by the predicted token's probability (or
uniformly at random), and writes the top ones. Nothing is banned: a predicted mask id is written, stays a
mask, and competes again later.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def transfer_schedule(block_masks: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, block) bool -> (B, steps) tokens to transfer per step."""
    n = block_masks.sum(1, keepdim=True)
    out = (n // steps).repeat(1, steps)
    for b in range(n.shape[0]):
        out[b, : int(n[b] % steps)] += 1
    return out


def _call(model, x, attention_mask):
    return model(x, attention_mask=attention_mask).logits


@torch.no_grad()
def generate(model, prompt: torch.Tensor, *, steps: int, gen_length: int, block_length: int, mask_id: int,
             eos_id: int, eot_id: int, attention_mask=None, temperature: float = 0.0, cfg_scale: float = 0.0,
             remasking: str = "low_confidence", logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False,
             rand=torch.rand) -> torch.Tensor:
    """prompt (B, P) left-padded ids (+ attention_mask (B, P)) -> (B, P + gen_length) canvas."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=torch.long)], 1)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype)], 1)
    prompt_index = x != mask_id
    if gen_length % block_length:
        raise AssertionError("gen_length must be a multiple of block_length")
    blocks = gen_length // block_length
    if steps % blocks:
        raise AssertionError("steps must be a multiple of the number of blocks")
    per_block = steps // blocks
    for nb in range(blocks):
        start, end = P + nb * block_length, P + (nb + 1) * block_length
        schedule = transfer_schedule(x[:, start:end] == mask_id, per_block)
        for i in range(per_block):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
                cond, uncond = _call(model, torch.cat([x, un_x]), both).chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = _call(model, x, attention_mask)
            if logits_eos_inf:
                logits[:, :, eos_id] = -torch.inf
            if temperature == 0:
                noisy = logits  # the reference returns the very same tensor
            else:  # exp(l) / (-log u)^T, in float64
                noisy = logits.double().exp() / (-torch.log(rand(logits.shape, dtype=torch.float64))) ** temperature
            x0 = noisy.argmax(-1)
            if confidence_eos_eot_inf:
                noisy[:, :, eos_id] = -torch.inf  # at T = 0 this is ``logits`` too
                logits[:, :, eot_id] = -torch.inf
            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1).gather(-1, x0[..., None])[..., 0].double()
            else:
                p = rand((B, x.shape[1]), dtype=torch.float32).double()
            p[:, end:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, p, torch.tensor(-torch.inf, dtype=p.dtype))
            for b in range(B):
                chosen = torch.topk(confidence[b], k=int(schedule[b, i])).indices
                x[b, chosen] = x0[b, chosen]
    return x
