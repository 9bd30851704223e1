"""Training recipes: named sets of config field values, as their papers' code trains.

A recipe is data, never code: a nested dict of section -> field -> value that goes through the same
typed path as the YAML (core/train/config.py), under the file's explicit keys, which override it:

    stage: stage3
    recipe: medlm                 # ME-DLM's Stage 2-3 loss, rollouts and curriculum
    stage3: {k_choices: [2, 4]}   # an explicit key still wins

``project`` (the default) is the empty recipe: the configs behave exactly as before recipes existed.

medlm (ME-DLM, ``utils/edit_trainer.py`` and the README's Stage 2/3 commands):
  * the masked loss: mean cross-entropy over the masked tokens of the micro-batch divided by one t
    drawn per micro-batch, the next-token head's mean added with the same 1/t; the first response
    token is never masked;
  * Stage 3: half the micro-batches (intermediate_ratio 0.5) train on drafts; a draft comes from a
    full rollout that unmasks k in {2, 4, 8, 16} random positions per pass until no mask is left;
    every pad in the draft is dropped; the edit passes grow with the fraction of training done,
    int(fraction * 32); labels leave the final token out of the alignment (it is labelled end-of-turn) and
    the gap after a deleted token unlabelled; the draft loss is
    (CE_cur + CE_next) / t with the t that masked the answer; the rollout's edit passes follow ME-DLM's
    inference rule (the edit strategy's ``paper`` preset).
conv-paper (Conv repo, ``finetune_tools.py``: ``q_xt_finetune_repeat`` and the R2FT loss after it,
``configs/config.yaml`` finetune keys, ``scripts/r2ft_*.sh``):
  * the answer is cut at a random point and everything after it is masked; the loser repeats a phrase
    of 1-14 tokens ending at the cut, at a random phase, over a span of 30-49 tokens with one eos written
    into it; the winner's log-prob (its masked tokens) is divided by the response length, the loser's by
    the span length; the mask id is out of the softmax; row losses are summed; beta_a 0.1.
"""

from __future__ import annotations

import copy
import difflib

RECIPES: dict[str, dict] = {
    "project": {},
    "medlm": {
        "objective": {"t_sampling": "micro_batch", "normalize": "masked", "mask_first_response_token": False,
                      "next_head_weight": 1.0},
        "stage3": {"intermediate_ratio": 0.5, "k_choices": [2, 4, 8, 16], "rollout_order": "random",
                   "full_rollout": True, "max_diffusion_steps": 32, "curriculum": "epoch_fraction",
                   "edit_passes_sampling": "fixed", "temperature": 0.0, "nearest_reference": False,
                   "draft_loss_weight": "inverse_t", "draft_padding": "strip", "ignore_deleted_gaps": True,
                   "labels": "medlm", "edit_preset": "paper"},
    },
    "conv-paper": {
        "r2ft": {"rejected": "phrase_span", "phrase_len": [1, 14], "span_len": [30, 49], "eos_prob": 1.0,
                 "lp_reduction": "length", "batch_reduction": "sum", "ban_mask_logit": True,
                 "beta_w": 1.0, "beta_l": 1.0, "gamma": 0.0, "beta_a": 0.1},
    },
}

# The stages each recipe describes; elsewhere it would set fields nothing reads.
RECIPE_STAGES: dict[str, tuple] = {"project": ("pretrain", "sft", "stage3", "r2ft"), "medlm": ("sft", "stage3"),
                                   "conv-paper": ("r2ft",)}


def _merge(base: dict, over: dict) -> dict:
    """Nested dict merge: ``over`` wins key by key (sections merge, values replace)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def with_recipe(raw: dict, where: str) -> dict:
    """The raw YAML dict with its recipe's values filled in under the explicit keys. Raises ValueError
    naming ``where`` and the key for an unknown recipe or one that does not describe the stage."""
    name = raw.get("recipe", "project")
    if not isinstance(name, str) or name not in RECIPES:
        close = difflib.get_close_matches(str(name), list(RECIPES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: recipe: unknown recipe {name!r}.{hint} Available: {sorted(RECIPES)}")
    stage = raw.get("stage")
    if stage is not None and stage not in RECIPE_STAGES[name]:
        raise ValueError(f"{where}: recipe: {name!r} is a recipe for stage(s) {list(RECIPE_STAGES[name])}, "
                         f"not {stage!r}")
    sections = {k: v for k, v in RECIPES[name].items() if k in raw and not isinstance(raw[k], dict)}
    if sections:  # let the typed path report the bad section value itself
        return raw
    return _merge(RECIPES[name], raw)
