"""What every strategy is: a typed config and a ``step`` that turns one forward pass into edits.

Strategies never call the model. The one loop (``core.decode.generate``) owns the canvas,
calls the model, charges NFE and hands each strategy a :class:`ForwardOutput`; the strategy
updates the :class:`DecodeState` in place and returns a :class:`StepRecord` (those types: :mod:`core.types`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from refinery.core.typed import build, check_fields
# the shared decode types live in core.types (imported by the loop too); re-exported here for strategy authors
from refinery.core.types import (CACHE_MODES, DecodeContext, DecodeState, ForwardOutput,  # noqa: F401
                                 ForwardRequest, StepRecord)


@dataclass(frozen=True)
class StrategyConfig:
    """Base of every strategy's frozen config. Subclasses add fields, with their ranges and choices in the
    field metadata (core.typed); ``check`` adds the rules that involve several fields or the run."""

    @classmethod
    def from_dict(cls, params: dict[str, Any], where: str = "config") -> "StrategyConfig":
        """YAML parameters -> checked config; a mistake raises ConfigError ``"WHERE: param: reason"``."""
        return build(cls, params, where, noun="parameter")

    def check(self, gen_length: int, max_nfe: int) -> None:
        """Raise ValueError naming the parameter when this config cannot run at this length and budget.

        The base checks every field against its metadata (for configs built without ``from_dict``);
        a subclass calls it first, then checks its cross-field rules."""
        check_fields(self, type(self).__name__)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_block_length(block_length: Optional[int], gen_length: int) -> None:
    """Blocks decoded in order must tile the region: ``block_length`` divides ``gen_length`` (None: one
    block); else a ValueError naming both."""
    if block_length is not None and (block_length <= 0 or gen_length % block_length):
        raise ValueError(f"block_length={block_length} must divide gen_length={gen_length}")


@dataclass(frozen=True)
class Preset:
    """A named setting of a strategy: data, not code. ``params`` go through the same ``from_dict``
    validation as any YAML entry; explicit parameters override them. ``about`` says where it comes from
    (the reference implementation it reproduces, or why a project variant exists)."""

    params: dict[str, Any]
    about: str


class Strategy(ABC):
    """A decoding strategy. Subclasses set ``config_class`` and ``description`` and implement ``step``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type[StrategyConfig]] = StrategyConfig
    presets: ClassVar[dict[str, Preset]] = {}  # e.g. {"paper": Preset({...}, "LLaDA generate.py ...")}
    # KV-cache modes the strategy's step can run on (it reads ForwardOutput.offset); refuse_cache may narrow
    # them for a configuration. A new strategy supports none until it says otherwise.
    cache_modes: ClassVar[tuple[str, ...]] = ("none",)
    no_cache_reason: ClassVar[str] = ""  # why a mode outside cache_modes cannot work (said when it is asked for)
    dual_needs_blocks: ClassVar[bool] = False  # a pass writes only inside its block: dual needs block_length
    # What the strategy asks of the checkpoint (``experiments.validate`` checks it before loading anything)
    needs_next_head: ClassVar[bool] = False  # it requests the ME-DLM next-token head (ForwardRequest.next_head)
    needs_delete_token: ClassVar[bool] = False  # it reads ``DecodeContext.delete_id`` (config.delete_token_id)

    def __init__(self, config: Optional[StrategyConfig] = None):
        self.config = config if config is not None else self.config_class()

    def min_passes(self, gen_length: int) -> int:
        """Fewest forward passes (NFE) this configuration needs; the loop refuses smaller budgets."""
        return 1

    def begin(self, ctx: DecodeContext, state: DecodeState) -> None:
        """Prepare per-call state (schedules) before the first pass."""

    def request(self, ctx: DecodeContext, state: DecodeState) -> ForwardRequest:
        return ForwardRequest()

    def sure_passes(self, ctx: DecodeContext, state: DecodeState) -> int:
        """How many passes from this one on are certain to find some row active (0 = unknown).

        The loop skips its per-pass host check ("any row left?") for these, so the CPU can queue the
        next pass while the GPU still runs this one. Strategies with a fixed plan know it at ``begin``."""
        return 0

    def refuse_cache(self, mode: str) -> Optional[str]:
        """Why this configuration cannot decode with KV-cache ``mode``, or None when it can."""
        if mode not in CACHE_MODES:
            return f"unknown cache mode {mode!r}; choose one of {list(CACHE_MODES)}"
        if mode not in self.cache_modes:
            return self.no_cache_reason or \
                f"{self.name or type(self).__name__} supports cache modes {list(self.cache_modes)} only"
        if mode == "dual" and self.dual_needs_blocks and getattr(self.config, "block_length", None) is None:
            return ("without block_length every pass may write anywhere in the region, so a dual cache would keep "
                    "nothing a prefix cache does not; set block_length or use cache='prefix'")
        return None

    def cache_window(self, ctx: DecodeContext, state: DecodeState) -> tuple[int, int]:
        """Region columns [lo, hi) that the next pass may change in any row (cached modes only).

        The loop keeps cached keys and values outside it (prefix: before lo; dual: before lo and from hi on)
        and refreshes the cache with a full pass whenever the window moves. Default: the whole region."""
        return 0, ctx.gen_length

    @abstractmethod
    def step(self, ctx: DecodeContext, state: DecodeState, out: ForwardOutput) -> StepRecord:
        """Update ``state`` in place from one forward pass and describe what changed."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config.as_dict().items())
        return f"{type(self).__name__}({params})"


def commit(ctx: DecodeContext, state: DecodeState, select: torch.Tensor, x0: torch.Tensor,
           scores: Optional[torch.Tensor] = None, remask: Optional[torch.Tensor] = None) -> StepRecord:
    """Write ``x0`` at the ``select``ed (B, L) region positions, re-mask ``remask``, refresh ``active``
    (rows with masks left) and return the mask-phase record of the pass."""
    P = ctx.prompt_width
    region = state.x[:, P:]
    select = select & state.active[:, None]
    new = torch.where(select, x0, region)  # where, not boolean indexing: no host sync on the hot path
    if remask is not None:
        remask = remask & state.active[:, None] & ~select
        new = torch.where(remask, ctx.mask_id, new)
    region.copy_(new)
    state.active = (region == ctx.mask_id).any(1)
    return StepRecord(phase="mask", tokens=region.clone(), lengths=state.lengths.clone(), unmasked=select,
                      remasked=remask, scores=scores)
