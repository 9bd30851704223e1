"""Stage 3 (ME-DLM mask-and-edit): train both heads on the model's own drafts.

With probability ``intermediate_ratio`` a micro-batch becomes a *draft* step:

1. mask the eos-padded answer at rate t ~ U(min_t, max_t) and let the current model fill it in with
   its own parallel decoding through the one decode loop (``core.decode.generate``, strategy
   ``masked`` committing k tokens per pass, k drawn from ``k_choices``), without gradients;
2. optionally apply edit passes (strategy ``edit``), their number ramping from 0 to
   ``max_diffusion_steps`` over ``curriculum_steps`` (the drafts get harder to fix as the model improves);
   with ``edit_passes_sampling: uniform`` each draft step draws 0 to that number, so the heads keep
   seeing raw drafts and every intermediate state a multi-pass edit goes through;
3. strip the eos padding and label the draft against the truth (response + <|eot_id|>) with the
   canonical edit labels (``core.edit_labels.batch_edit_labels``);
4. input = prompt + draft (batch padding out of attention): the output head learns ``cur_labels`` on
   draft positions (keep / replace / <|del|>), the next-token head ``next_labels`` on the gaps after
   them and ``gap0_label`` at the last prompt position (the gap before the draft).

Otherwise it is an ordinary Stage-2 masked step. When the data gives other valid responses per
record (``"references"``) and ``nearest_reference`` is on, step 3 labels each draft against the
valid response nearest to it: with several correct surface forms, labels toward one sampled form
teach the edit heads to rewrite a draft into a mix of forms in one parallel pass.

Cost. The rollout is capped at ``rollout_passes`` forward passes: the masked strategy commits
max(k, what is needed to finish in time) per pass, so a rollout costs ``rollout_passes`` no-grad
forwards (plus the edit passes) whatever the answer length. A forward is about a third of a
forward+backward, so ``rollout_passes + max_diffusion_steps <= 3`` keeps a draft step under 2x a
Stage-2 step; ``tests/benchmarks/train_step_cost.py`` measures it.

ME-DLM's own Stage 3 (``recipe: medlm``, core/train/recipes.py) differs: one t per micro-batch, the
first answer token never masked, random-order rollouts run until no mask is left (``full_rollout``:
ceil(masks / k) passes, so k matters at every length and a draft step can cost many forwards), every pad
dropped from the draft, edit passes int(fraction of training * 32), gaps after deletions unlabelled,
and the draft loss divided by t.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from refinery.core.fused import head_weight, linear_cross_entropy, uses_fused_ce
from refinery.core.train.config import TrainConfig
from refinery.core.train.data import ChatBatch
from refinery.core.train.data import to_device
from refinery.core.train.objectives import LossOutput, Selection, SFTObjective

IGNORE = -100


def unwrap(model):
    """The LLaDAModel inside a DeepSpeed engine (its forward gathers ZeRO-3 shards by itself)."""
    return getattr(model, "module", model)


def edit_passes_at(step: int, max_steps: int, cfg: TrainConfig) -> int:
    """Curriculum: 0 edit passes at step 0, ``max_diffusion_steps`` from ``curriculum_steps`` on ("ramp"), or
    ME-DLM's int(step / horizon * max) over each horizon ("epoch_fraction", horizon = one pass over the data
    when it runs a single epoch, as ME-DLM's Stage 3 does)."""
    s3 = cfg.stage3
    if s3.max_diffusion_steps == 0:
        return 0
    horizon = max(1, s3.curriculum_steps or max_steps)
    if s3.curriculum == "epoch_fraction":  # ME-DLM: int(fraction of the epoch done * max), restarting each epoch
        return int((step % horizon) / horizon * s3.max_diffusion_steps)
    return min(s3.max_diffusion_steps, (step * (s3.max_diffusion_steps + 1)) // horizon)


def draft_targets(prompts: list[np.ndarray], drafts: list[np.ndarray], truths: list[np.ndarray], special: dict,
                  ignore_deleted_gaps: bool = False, layout: str = "project"):
    """Lay out prompt + draft rows and their edit labels (``label_rows``).

    Returns input_ids (B, T), attention_mask (B, T) bool, cur_targets (B, T), next_targets (B, T) with
    IGNORE (-100) wherever nothing is learned: cur_targets[b, P_b + i] = cur_labels[i], next_targets[b, P_b + i]
    = next_labels[i], next_targets[b, P_b - 1] = gap0_label."""
    pad, B = special["pad_token_id"], len(prompts)
    labels = label_rows(drafts, truths, special, ignore_deleted_gaps, layout)
    T = max(len(p) + len(d) for p, d in zip(prompts, drafts))
    ids = torch.full((B, T), pad, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.bool)
    cur_t = torch.full((B, T), IGNORE, dtype=torch.long)
    next_t = torch.full((B, T), IGNORE, dtype=torch.long)
    for b, (p, d, (cur, nxt, gap0)) in enumerate(zip(prompts, drafts, labels)):
        P, n = len(p), len(d)
        ids[b, :P] = torch.as_tensor(p)
        ids[b, P:P + n] = torch.as_tensor(d)
        attn[b, :P + n] = True
        cur_t[b, P:P + n] = torch.as_tensor(cur, dtype=torch.long)
        next_t[b, P:P + n] = torch.as_tensor(nxt, dtype=torch.long)
        next_t[b, P - 1] = int(gap0)
    return ids, attn, cur_t, next_t


def label_rows(drafts, truths, special: dict, ignore_deleted_gaps: bool, layout: str) -> list[tuple]:
    """Per row (cur_labels (n,), next_labels (n,), gap0_label) for a draft of n tokens.

    "project": the canonical labels of the whole draft against the whole truth (past the end: eos).
    "medlm": ME-DLM's layout - both sequences aligned without their final token; the final draft token is
    labelled end-of-turn and its gap is not trained; the gap before it is labelled end-of-turn when nothing
    is inserted there, even right after a deletion; an empty draft trains nothing."""
    from refinery.core.edit_labels import batch_edit_labels

    as64 = [np.asarray(x, dtype=np.int64) for x in drafts], [np.asarray(x, dtype=np.int64) for x in truths]
    kw = dict(delete_id=special["delete_token_id"], ignore_index=IGNORE, ignore_deleted_gaps=ignore_deleted_gaps)
    if layout == "project":
        labs = batch_edit_labels(*as64, eos_id=special["eos_token_id"], **kw)
        return [(lab.cur_labels, lab.next_labels, lab.gap0_label) for lab in labs]
    eot = special.get("eot_token_id")
    eot = special["eos_token_id"] if eot is None else eot
    labs = batch_edit_labels([d[:-1] for d in as64[0]], [t[:-1] for t in as64[1]], eos_id=eot, **kw)
    out = []
    for d, lab in zip(as64[0], labs):
        if len(d) == 0:
            out.append((d, d, IGNORE))
            continue
        cur, nxt, gap0 = np.append(lab.cur_labels, eot), np.append(lab.next_labels, IGNORE), lab.gap0_label
        if len(d) >= 2 and nxt[-2] == IGNORE:
            nxt[-2] = eot
        elif len(d) == 1 and gap0 == IGNORE:
            gap0 = eot
        out.append((cur, nxt, gap0))
    return out


def nearest_references(drafts: list[np.ndarray], truths: list[np.ndarray], references) -> list[np.ndarray]:
    """Per row, the candidate (truth first, then its references) at the least edit distance from the draft;
    ties keep the earlier candidate. One batched Numba call over all (draft, candidate) pairs."""
    from refinery.core.align import batch_levenshtein, pack

    cands = [[t, *refs] for t, refs in zip(truths, references)]
    a_flat, a_off = pack([d for d, c in zip(drafts, cands) for _ in c], "drafts")
    b_flat, b_off = pack([x for c in cands for x in c], "candidates")
    dist = batch_levenshtein(a_flat, a_off, b_flat, b_off)
    out, k = [], 0
    for c in cands:
        out.append(c[int(np.argmin(dist[k:k + len(c)]))])
        k += len(c)
    return out


def _mean_ce(logits: torch.Tensor, targets: torch.Tensor, where: Selection) -> torch.Tensor:
    """Mean CE over the labelled positions ``where`` (found on the host) only, no float copy of the whole
    (B, T, V) logits. logits (B, T, V), targets (B, T) on the device."""
    ce = F.cross_entropy(where.take(logits).float(), where.take(targets), reduction="sum")
    return ce / where.count


def _mean_linear_ce(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, where: Selection) -> torch.Tensor:
    """:func:`_mean_ce` of ``hidden @ head.T`` (hidden (B, T, D), head (V, D)) through the fused linear CE."""
    return linear_cross_entropy(where.take(hidden), head, where.take(targets), fused=True).sum() / where.count


class Stage3Objective:
    kind = "chat"

    def __init__(self, cfg: TrainConfig, special: dict):
        self.cfg, self.special = cfg, special
        self.sft = SFTObjective(cfg, special)
        if cfg.stage3.edit_preset is not None:  # fail before training, not at the first edit pass
            from refinery.strategies.registry import preset_params

            try:
                preset_params("edit", cfg.stage3.edit_preset)
            except KeyError as e:
                raise ValueError(f"stage3.edit_preset: {e.args[0]}") from None

    def loss(self, model, batch: ChatBatch, gen: torch.Generator, step: int) -> LossOutput:
        if torch.rand(1, generator=gen).item() >= self.cfg.stage3.intermediate_ratio:
            out = self.sft.loss(model, batch, gen, step)
            out.metrics["draft_step"] = 0.0
            return out
        prompts, drafts, truths, n_edit, t = self.rollout(unwrap(model), batch, gen, step)
        out = self.draft_loss(model, prompts, drafts, truths, t[0] if self.cfg.stage3.draft_loss_weight == "inverse_t"
                              else None)
        out.metrics["draft_edit_passes"] = float(n_edit)
        return out

    @torch.no_grad()
    def rollout(self, model, batch: ChatBatch, gen: torch.Generator, step: int):
        """Partially mask each answer and let the model finish it (then edit it): ragged prompts, drafts,
        truths, the number of edit passes applied, and t (B,), the masking rate of each row."""
        from refinery.core.decode import generate
        from refinery.strategies import get_strategy

        s3, sp = self.cfg.stage3, self.special
        host = batch.on_host()  # lengths and ids from the CPU batch: no device reads
        B = host.input_ids.shape[0]
        rows = [(int(host.prompt_len[b]), int(host.response_mask[b].sum()), int(host.target_len[b])) for b in range(B)]
        G = max(r for _, r, _ in rows)
        ids = host.input_ids
        init, t = self.masked_answers(ids, rows, G, gen)
        k = s3.k_choices[int(torch.randint(len(s3.k_choices), (1,), generator=gen))]
        seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        prompts = [ids[b, :P].numpy() for b, (P, _, _) in enumerate(rows)]
        # full: every row unmasks min(k, what is left) per pass until no mask is left (ME-DLM's mask_diffusion)
        passes = max(1, -(-int((init == sp["mask_token_id"]).sum(1).max()) // k)) if s3.full_rollout \
            else min(s3.rollout_passes, G)
        order = "random" if s3.rollout_order == "random" else "low_confidence"
        strategy = get_strategy("masked", tokens_per_pass=k, temperature=s3.temperature, remasking=order)
        res = generate(model, [p.tolist() for p in prompts], G, strategy, Fraction(passes, G),
                       init=init, seed=seed, record_trace=False)
        tokens, lengths = self.draft_region(res.tokens)
        n_edit = edit_passes_at(step, self.cfg.optim.max_steps, self.cfg)
        if s3.edit_passes_sampling == "uniform":  # also the states after fewer edits than the curriculum's
            n_edit = int(torch.randint(n_edit + 1, (1,), generator=gen))
        n_edit = n_edit if G > n_edit else 0  # an answer too short for the passes is labelled as drafted
        if n_edit > 0:
            edit = get_strategy("edit", preset=s3.edit_preset, **{"edit_passes": n_edit, **s3.edit_strategy_params})
            res = generate(model, [p.tolist() for p in prompts], G, edit, Fraction(n_edit + 1, G),
                           init=tokens, seed=seed + 1, record_trace=False)
            tokens, lengths = res.tokens, res.lengths
        tokens, lengths = tokens.cpu(), lengths.cpu()
        drafts = [tokens[b, :int(lengths[b])].numpy() for b in range(B)]
        truths = [ids[b, P:P + n].numpy() for b, (P, _, n) in enumerate(rows)]
        if s3.nearest_reference and any(batch.references):
            truths = nearest_references(drafts, truths, batch.references)
        return prompts, drafts, truths, n_edit, t

    def masked_answers(self, ids: torch.Tensor, rows: list, G: int, gen: torch.Generator):
        """The eos-padded answers, left-aligned in (B, G), masked at rate t ~ U(min_t, max_t) per row (or one t
        per micro-batch); the first answer token stays visible when the objective says so. -> init, t (B,)."""
        obj, sp = self.cfg.objective, self.special
        B = len(rows)
        region = torch.full((B, G), sp["eos_token_id"], dtype=torch.long)
        for b, (P, r, _) in enumerate(rows):
            region[b, :r] = ids[b, P:P + r]
        t = obj.min_t + (obj.max_t - obj.min_t) * torch.rand(1 if obj.t_sampling == "micro_batch" else B, generator=gen)
        t = t.expand(B)
        span = torch.arange(G)[None, :] < torch.tensor([r for _, r, _ in rows])[:, None]
        if not obj.mask_first_response_token:
            span[:, 0] = False
        masked = (torch.rand(B, G, generator=gen) < t[:, None]) & span
        return torch.where(masked, torch.full_like(region, sp["mask_token_id"]), region), t

    def draft_region(self, tokens: torch.Tensor):
        """(B, G) rollout output -> (B, G) drafts left-aligned with pad after them, lengths (B,). "cut": up to the
        first eos/pad; "strip": every eos/pad token dropped wherever it is (ME-DLM drops all pads)."""
        from refinery.core.decode import strip_padding

        eos, pad = self.special["eos_token_id"], self.special["pad_token_id"]
        if self.cfg.stage3.draft_padding == "cut":
            return tokens, strip_padding(tokens, eos, pad)
        keep = (tokens != eos) & (tokens != pad)
        lengths = keep.sum(1)
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in order
        packed = tokens.gather(1, order)
        packed[torch.arange(tokens.shape[1], device=tokens.device)[None, :] >= lengths[:, None]] = pad
        return packed, lengths

    def draft_loss(self, model, prompts, drafts, truths, t=None) -> LossOutput:
        """Both heads' mean CE on the labelled draft positions; divided by the rollout's masking rate ``t``
        (a scalar: one per micro-batch) when given, as ME-DLM weights its intermediate steps."""
        host = draft_targets(prompts, drafts, truths, self.special, self.cfg.stage3.ignore_deleted_gaps,
                             self.cfg.stage3.labels)
        dev = unwrap(model).device
        ids, attn, cur_t, next_t = (to_device(x, dev) for x in host)
        # the labelled positions and the logged fraction come from the host labels: no device reads
        cur_where, next_where = Selection.of(host[2] != IGNORE, dev), Selection.of(host[3] != IGNORE, dev)
        if uses_fused_ce(model):  # neither head's (B, T, V) logits are built
            h = model(ids, attention_mask=attn, compute_next=True, compute_logits=False).hidden_states
            cur = _mean_linear_ce(h, head_weight(model, "lm_head"), cur_t, cur_where)
            nxt = _mean_linear_ce(h, head_weight(model, "next_token_head"), next_t, next_where)
        else:
            out = model(ids, attention_mask=attn, compute_next=True)
            cur, nxt = _mean_ce(out.logits, cur_t, cur_where), _mean_ce(out.next_logits, next_t, next_where)
        loss = cur + self.cfg.objective.next_head_weight * nxt
        if t is not None:
            loss = loss / float(t)
        labelled = host[2] != IGNORE
        changed = (labelled & (host[2] != host[0])).sum() / labelled.sum().clamp(min=1)
        metrics = {"loss_cur": cur.detach(), "loss_next": nxt.detach(), "draft_step": 1.0,
                   "draft_edit_frac": changed.item()}
        return LossOutput(loss, metrics, int(host[1].sum()))
