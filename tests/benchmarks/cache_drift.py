"""How far a cached pass's logits drift from an uncached pass on the same canvas (the Fast-dLLM approximation).

    OMP_NUM_THREADS=1 PYTHONPATH=. python tests/benchmarks/cache_drift.py [--model embedded] [--limit 16]

Decodes embedded-task prompts with each cache-capable entry and mode; at every pass that ran on the cache
it also runs the uncached pass on the very same canvas and compares the two over the masked positions of
the computed window: the share whose top-1 token agrees, and the mean and worst absolute difference of
the top-1 probability (the confidence the strategies rank by). The decode itself follows the cached
logits, as it would without the measurement. Prints one line per (task, entry, mode).
"""

from __future__ import annotations

import argparse

import torch

import refinery.core.decode as decode
from refinery.core.checkpoint import load_model_and_tokenizer
from refinery.core.tasks import get_task
from refinery.core.tokenizer import render_prompt

ENTRIES = {  # label: (strategy, params, budget) - the block variants of embedded_cache.yaml
    "masked": ("masked", {}, "1/2"),
    "masked-semiar16": ("masked", {"block_length": 16}, "1/2"),
    "threshold-b16": ("threshold", {"threshold": 0.9, "block_length": 16}, "1/2"),
    "edit-b24": ("edit", {"edit_passes": 4, "keep_threshold": 0.5, "revert_margin": 0.5, "revert_to": "best",
                          "block_length": 24}, "1/2"),
}


def measure(model, prompts, name, params, budget, mode, mask_id) -> dict:
    """Decode with ``mode`` while comparing every cached pass against the uncached one on the same canvas."""
    agree, n, diffs = 0, 0, []
    original = decode._forward

    def compared(model_, state, P, req, mask_id_, cache, window):
        out, ran = original(model_, state, P, req, mask_id_, cache, window)
        if ran in ("prefix", "dual"):
            full, _ = original(model_, state, P, req, mask_id_, decode._CacheState("none"), window)
            lo, w = out.offset, out.logits.shape[1]
            masked = state.x[:, P + lo:P + lo + w] == mask_id if not req.next_head else torch.ones_like(
                state.x[:, P + lo:P + lo + w], dtype=torch.bool)
            pc, pf = out.logits.float().softmax(-1), full.logits[:, lo:lo + w].float().softmax(-1)
            tc, tf = pc.max(-1), pf.max(-1)
            nonlocal agree, n
            agree += int(((tc.indices == tf.indices) & masked).sum())
            n += int(masked.sum())
            diffs.append((tc.values - tf.values).abs()[masked])
        return out, ran

    decode._forward = compared
    try:
        res = decode.generate(model, prompts, 48, name, budget, strategy_params=params, cache=mode, record_trace=False)
    finally:
        decode._forward = original
    d = torch.cat(diffs) if diffs else torch.zeros(1)
    return dict(positions=n, top1_agree=agree / max(n, 1), conf_diff_mean=float(d.mean()), conf_diff_max=float(d.max()),
                nfe=float(res.nfe.float().mean()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--limit", type=int, default=16)
    args = ap.parse_args()
    model, tok = load_model_and_tokenizer(args.model, "cpu", None)
    mask_id = model.config.mask_token_id
    print(f"{'task':<8}{'entry':<18}{'cache':<8}{'positions':>10}{'top-1 agree':>13}{'|dconf| mean':>14}{'max':>8}")
    for task_name in ("arith", "pycode"):
        examples = get_task(task_name).examples("test", args.limit, 0)
        prompts = [render_prompt(tok, e.messages()) for e in examples]
        for label, (name, params, budget) in ENTRIES.items():
            for mode in ("prefix", "dual"):
                if decode.get_strategy(name, **params).refuse_cache(mode):
                    continue
                m = measure(model, prompts, name, params, budget, mode, mask_id)
                print(f"{task_name:<8}{label:<18}{mode:<8}{m['positions']:>10}{100 * m['top1_agree']:>12.1f}%"
                      f"{m['conf_diff_mean']:>14.4f}{m['conf_diff_max']:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
