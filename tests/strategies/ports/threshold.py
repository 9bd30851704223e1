"""Fast-dLLM's parallel decoding (Wu et al., 2025) as its ``llada/generate.py`` runs it, threshold rule.

Written from the reference's logic: blocks are decoded in order; in a block the loop runs until the
block holds no mask. Each pass predicts every position, scores the masked positions up to the end of the
current block by the predicted token's float64 softmax probability, and writes the most confident one
plus every other whose confidence is >= tau (the reference drops ranks 1.. that fall below tau).
Nothing is banned. The batch moves to the next block when no row has a mask left in the current one;
a row with its block already full sits a pass out (it has no candidates).

One addition the reference does not have, for the budget cap the strategy documents: ``max_passes``
counts each row's passes in which it had candidates; on the pass that reaches it, the row writes every
masked position it has, in every block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def generate(model, prompt: torch.Tensor, *, gen_length: int, block_length: int, threshold: float, mask_id: int,
             attention_mask=None, temperature: float = 0.0, max_passes: int | None = None,
             rand=torch.rand) -> torch.Tensor:
    """prompt (B, P) left-padded ids (+ attention_mask) -> (B, P + gen_length) canvas."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=torch.long)], 1)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype)], 1)
    passes = torch.zeros(B, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)  # rows past their cap (never without max_passes)
    for nb in range(gen_length // block_length):
        end = P + (nb + 1) * block_length
        while ((x[:, P + nb * block_length:end] == mask_id) & ~done[:, None]).any():
            logits = model(x, attention_mask=attention_mask).logits
            mask_index = (x == mask_id) & ~done[:, None]
            mask_index[:, end:] = False
            acting = mask_index.any(1)
            passes += acting.long()
            last = acting & (passes == max_passes) if max_passes else torch.zeros_like(acting)
            mask_index |= (x == mask_id) & last[:, None]
            if temperature == 0:
                x0 = logits.argmax(-1)
            else:
                x0 = (logits.double().exp() / (-torch.log(rand(logits.shape, dtype=torch.float64))) ** temperature
                      ).argmax(-1)
            p = F.softmax(logits.double(), -1).gather(-1, x0[..., None])[..., 0]
            confidence = torch.where(mask_index, p, torch.tensor(-torch.inf, dtype=p.dtype))
            for b in range(B):
                n = int(mask_index[b].sum())
                ranked = torch.topk(confidence[b], k=n).indices
                keep = [int(ranked[0])] if n else []
                keep += [int(j) for j in ranked[1:] if last[b] or confidence[b, j] >= threshold]
                x[b, keep] = x0[b, keep]
            done |= last
    return x
