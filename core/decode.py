"""The one generation loop. It is the only code in refinery that calls the model while generating.

    result = generate(model, prompts, gen_length=64, strategy="masked", budget="1/4")

Every strategy runs through :func:`generate` on the same canvas and is charged the same way:
each forward pass costs every still-active row one NFE (two with classifier-free guidance,
which runs the prompt-masked canvas too). A budget ``b`` lets a row use at most
``ceil(b * gen_length)`` passes; strategies that finish early report what they used.

Prompts are left-padded into a block of width P, so the generation region is the same
columns [P, P+L) for every row; position ids are counted over real tokens, which makes a
padded batch decode exactly like its rows one at a time.

KV caching (``cache=``, Fast-dLLM, Wu et al., 2025): each pass the strategy names the region
window [lo, hi) it may change (:meth:`Strategy.cache_window`). ``prefix`` keeps the keys and values
of the columns before the window, ``dual`` also those after it; a pass then computes only the
window (prefix: from the window to the end of the canvas) and reads the rest from the cache. A
full pass refills the cache whenever the window moves (each new block, the start of an edit
phase), and its logits are used as any pass's. In a bidirectional model the cached keys and
values go stale as the window's tokens change, so both modes approximate the uncached loop; the
cache is exact only for the columns whose inputs did not change (every layer-0 key and value of
them). NFE is charged as without a cache; ``StepRecord.cache`` says how each pass ran.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Optional, Sequence, Union

import torch

from refinery.core.graphs import acquire_forward, graph_fallback_reason, release_forward
from refinery.core.model import KVCache
from refinery.core.trace import Trace
from refinery.core.types import CACHE_MODES, DecodeContext, DecodeState, ForwardOutput, ForwardRequest, StepRecord
from refinery.core.types import strip_padding  # noqa: F401  (re-exported: it was defined here)
from refinery.strategies.base import Strategy
from refinery.strategies.registry import get_strategy
from refinery.strategies.sampling import passes_for_budget

log = logging.getLogger(__name__)

Prompts = Union[Sequence[Sequence[int]], tuple[torch.Tensor, torch.Tensor]]


def parse_budget(budget: Union[str, float, Fraction]) -> Fraction:
    """'1/8', 0.125 or Fraction(1, 8) -> Fraction(1, 8); forward passes per generated token, in (0, 1]."""
    try:
        frac = Fraction(budget).limit_denominator(4096) if not isinstance(budget, Fraction) else budget
    except (ValueError, ZeroDivisionError, TypeError):
        raise ValueError(f"budget {budget!r} is not a fraction like '1/4' or a number") from None
    if not 0 < frac <= 1:
        raise ValueError(f"budget {budget!r} must lie in (0, 1] forward passes per generated token")
    return frac


def check_budget(budget: Union[str, float, Fraction], gen_length: int) -> int:
    """The forward passes ``budget`` allows at ``gen_length`` (ceil(budget * L)); refuses a budget worth less
    than one pass, which would run one pass anyway and be labelled with a budget it did not have."""
    if isinstance(gen_length, bool) or not isinstance(gen_length, int) or gen_length < 1:
        raise ValueError(f"gen_length {gen_length!r} must be a positive number of tokens")
    frac = parse_budget(budget)
    if frac * gen_length < 1:
        raise ValueError(f"budget {budget} at gen_length {gen_length} is {float(frac * gen_length):.3g} forward "
                         f"passes; one pass is the least a decode uses (effective NFE 1 = budget 1/{gen_length}), "
                         f"so the smallest budget that means something at this gen_length is 1/{gen_length}")
    return passes_for_budget(frac, gen_length)


def check_prompt_fits(prompt_width: int, gen_length: int, model_config) -> None:
    """Refuse prompt + generation longer than the model's ``max_sequence_length`` (the rotary tables end there)."""
    limit = getattr(model_config, "max_sequence_length", None)
    if limit is not None and prompt_width + gen_length > limit:
        raise ValueError(f"prompt of {prompt_width} tokens + gen_length {gen_length} = {prompt_width + gen_length} "
                         f"tokens is more than the model's max_sequence_length {limit}; shorten the prompt "
                         f"or gen_length")


def left_pad(prompts: Prompts, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged id lists, or an (ids, mask) pair padded on either side -> left-padded (B, P) ids and bool mask."""
    if isinstance(prompts, tuple) and len(prompts) == 2 and isinstance(prompts[0], torch.Tensor):
        ids, mask = prompts
        rows = [ids[b][mask[b].bool()].tolist() for b in range(ids.shape[0])]
    else:
        rows = [list(map(int, p)) for p in prompts]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, P - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[b, P - len(r):] = True
    return ids.to(device), mask.to(device)


@dataclass
class GenerationResult:
    """tokens (B, L): final generation region (``pad_id`` past ``lengths``); nfe (B,) passes charged per row;
    trace: the per-pass records (None unless recorded); seconds: wall time of the loop; draft_tokens /
    draft_lengths: for a strategy with a refinement phase (``edit``), the region as that phase found it
    (the mask phase's draft), else None."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    nfe: torch.Tensor
    trace: Optional[Trace]
    seconds: float
    max_nfe: int
    draft_tokens: Optional[torch.Tensor] = None
    draft_lengths: Optional[torch.Tensor] = None
    graph_passes: int = 0  # passes replayed from CUDA graphs (``graphs=``; 0 when the forward ran eager)


def _special_ids(model) -> dict:
    c = model.config
    return dict(mask_id=c.mask_token_id, eos_id=c.eos_token_id, pad_id=c.pad_token_id,
                delete_id=getattr(c, "delete_token_id", None), eot_id=getattr(c, "eot_token_id", None))


@dataclass
class _CacheState:
    """The loop's KV cache between passes: the mode, the cache and what it was filled for."""

    mode: str  # one of CACHE_MODES
    kv: Optional[KVCache] = None
    key: Optional[tuple] = None  # (lo, hi or None, uncond, next head) it was filled for; a new key refills it


def _forward(model, state: DecodeState, P: int, req: ForwardRequest, mask_id: int, cache: _CacheState,
             window: tuple[int, int]) -> tuple[ForwardOutput, str]:
    """The single model call site of generation -> (outputs, how the pass ran: StepRecord.cache).

    The output head is evaluated from the window's first column on (the region without a cache), so its
    logits are one contiguous block; the next-token head also reads the column before it (gap lo), which
    shifts both heads by one. A canvas without padding is passed without an attention mask, which lets
    SDPA take its flash kernel."""
    x, attn = state.x, (None if state.dense else state.attention_mask)
    if req.uncond:
        un = x.clone()
        un[:, :P] = torch.where(state.attention_mask[:, :P], torch.full_like(un[:, :P], mask_id), un[:, :P])
        x, attn = torch.cat([x, un]), (None if attn is None else torch.cat([attn, attn]))
    nh = 1 if req.next_head else 0
    lo, hi = window if cache.mode != "none" else (0, state.x.shape[1] - P)
    start = P + lo - nh
    key = (lo, hi if cache.mode == "dual" else None, req.uncond, nh)
    if cache.mode == "none":
        out, ran = model(x, attention_mask=attn, compute_next=req.next_head, logits_from=start), ""
    elif cache.kv is None or cache.key != key:  # the window moved: one full pass refills the cache
        out = model(x, attention_mask=attn, compute_next=req.next_head, logits_from=start, use_cache=True)
        cache.kv, cache.key, ran = out.kv_cache, key, "refresh"
    else:
        end = P + hi if cache.mode == "dual" else x.shape[1]
        out = model(x[:, start:end], attention_mask=attn, compute_next=req.next_head, kv_cache=cache.kv,
                    cache_start=start)
        ran = cache.mode
    logits = out.logits[:, nh:]
    next_logits = out.next_logits if req.next_head else None
    if req.next_head and next_logits is None:
        raise ValueError("this strategy needs the model's next-token head (config.next_token_head=True)")
    if req.uncond:
        B = state.x.shape[0]
        return ForwardOutput(logits[:B], None if next_logits is None else next_logits[:B], logits[B:], lo), ran
    return ForwardOutput(logits, next_logits, offset=lo), ran


def check_cache(strategy: Strategy, cache: str) -> None:
    """Raise ValueError naming the strategy and the mode when ``strategy`` cannot decode with ``cache``."""
    if cache not in CACHE_MODES:
        raise ValueError(f"cache {cache!r} unknown; choose one of {list(CACHE_MODES)}")
    reason = strategy.refuse_cache(cache)
    if reason is not None:
        raise ValueError(f"strategy {strategy.name!r} cannot decode with cache={cache!r}: {reason}")


@torch.no_grad()
def generate(
    model,
    prompts: Prompts,
    gen_length: int,
    strategy: Union[str, Strategy],
    budget: Union[str, float, Fraction] = "1/1",
    *,
    init: Optional[torch.Tensor] = None,
    seed: int = 0,
    record_trace: bool = True,
    on_step: Optional[Callable[[int, StepRecord], None]] = None,
    strategy_params: Optional[dict] = None,
    cache: str = "none",
    graphs: str = "auto",
) -> GenerationResult:
    """Generate ``gen_length`` tokens after each prompt with ``strategy`` under ``budget``.

    prompts: ragged id lists, or (ids (B, P), mask (B, P)) padded on either side.
    init: optional (B, L) starting region (mask id where unknown), e.g. a partially masked answer.
    on_step: called after every pass with (pass index, record) - the app streams from it.
    cache: "none" | "prefix" | "dual" (see the module docstring); a strategy that cannot run on the mode
    raises ValueError before any pass.
    graphs: "auto" | "on" | "off": replay the forward passes from CUDA graphs (``core.graphs``; same
    results, without the launch overhead that dominates small batches). "auto" does so on CUDA for
    batches of up to ``core.graphs.AUTO_MAX_ROWS`` rows; anywhere else the forward runs eager, and "on"
    logs why. The graphs stay with the model for the next call (``core.graphs.release_graphs`` frees them).
    """
    if isinstance(strategy, str):
        strategy = get_strategy(strategy, **(strategy_params or {}))
    check_cache(strategy, cache)
    kv = _CacheState(cache)
    ids = _special_ids(model)
    device = next(model.parameters()).device
    max_nfe = check_budget(budget, gen_length)
    strategy.config.check(gen_length, max_nfe)
    need = strategy.min_passes(gen_length)
    if max_nfe < need:
        raise ValueError(f"budget {budget} allows {max_nfe} forward passes for {gen_length} tokens, "
                         f"but {strategy!r} needs at least {need}")
    prompt_ids, prompt_mask = left_pad(prompts, ids["pad_id"], device)
    B, P = prompt_ids.shape
    check_prompt_fits(P, gen_length, model.config)
    eager_reason = graph_fallback_reason(model, B, graphs, cache)
    if eager_reason is not None and graphs == "on":
        log.warning("graphs='on': the forward runs eager: %s", eager_reason)
    if init is None:
        region = torch.full((B, gen_length), ids["mask_id"], dtype=torch.long, device=device)
    else:
        if tuple(init.shape) != (B, gen_length):
            raise ValueError(f"init has shape {tuple(init.shape)}, expected ({B}, {gen_length})")
        region = init.to(device=device, dtype=torch.long)
    gens = [torch.Generator(device=device).manual_seed(seed) for _ in range(B)]
    ctx = DecodeContext(P, gen_length, max_nfe, ids["mask_id"], ids["eos_id"], ids["pad_id"], ids["delete_id"],
                        ids["eot_id"], gens)
    state = DecodeState(
        x=torch.cat([prompt_ids, region], 1),
        attention_mask=torch.cat([prompt_mask, torch.ones_like(region, dtype=torch.bool)], 1),
        lengths=torch.full((B,), gen_length, dtype=torch.long, device=device),
        active=torch.ones(B, dtype=torch.bool, device=device),
        nfe=torch.zeros(B, dtype=torch.long, device=device),
        dense=bool(prompt_mask.all()),
    )
    strategy.begin(ctx, state)  # may prepare the canvas (e.g. strip a given draft's padding)
    trace = Trace(state.x[:, P:], state.lengths, ids["mask_id"], ids["pad_id"], ids["eos_id"]) if record_trace else None
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    call = model if eager_reason is not None else acquire_forward(model)  # the model, or its graph runner
    replayed = call.replays if call is not model else 0
    passes_cost, sure = 0, 0  # host-side: cost of the passes so far; passes known to find work
    try:
        while True:
            req = strategy.request(ctx, state)
            charged = state.active.clone()
            passes_cost += req.nfe_cost
            sure = sure or strategy.sure_passes(ctx, state)
            if sure > 0 and passes_cost <= max_nfe:
                sure -= 1  # no row can be over budget and some row is active: no host sync this pass
            else:
                sure = 0
                # One host sync: "anything left?" and "would this pass break the budget?" together.
                go, over = torch.stack([charged.any(), ((state.nfe + req.nfe_cost * charged) > max_nfe).any()]).tolist()
                if not go:
                    break
                if over:
                    raise RuntimeError(f"{strategy!r} asked for more than {max_nfe} passes (budget {budget})")
            window = strategy.cache_window(ctx, state) if cache != "none" else (0, gen_length)
            out, ran = _forward(call, state, P, req, ctx.mask_id, kv, window)
            state.nfe += req.nfe_cost * charged
            record = strategy.step(ctx, state, out)
            record.active, record.cache = charged, ran
            if trace is not None:
                trace.append(record)
            if on_step is not None:
                on_step(state.step, record)
            state.step += 1
    finally:
        model.train(was_training)
        release_forward(call)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if not torch.equal(state.x[:, :P], prompt_ids):
        raise RuntimeError(f"{strategy!r} changed prompt positions")
    draft = state.draft
    return GenerationResult(state.x[:, P:].clone(), state.lengths.clone(), state.nfe.clone(), trace, seconds, max_nfe,
                            *((draft.tokens, draft.lengths) if draft is not None else (None, None)),
                            graph_passes=call.replays - replayed if call is not model else 0)
