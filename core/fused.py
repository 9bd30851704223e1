"""Fused training kernels for the LLaDA model, chosen by name (``LLaDAConfig.kernels``).

    "eager"    the model's own PyTorch code, unchanged (the default, and the reference).
    "liger"    Liger Kernel's Triton RMSNorm, rotary embedding and SwiGLU, a fused linear cross-entropy for
               the heads (the (N, V) logits are never materialised in training), and SDPA with cuDNN's
               attention first in line.
    "compile"  the same heads and attention, with each block's eager math compiled by torch.compile for the
               training shape (Inductor fuses norm, rotary, SwiGLU, residual adds and dtype casts into a few
               kernels); blocks outside it run the "liger" kernels. The trainer also takes PyTorch's fused
               AdamW whenever the kernels are not "eager".

Every fused path falls back to the eager one when its kernel is missing: no Liger or Triton installed, or
tensors on the CPU. So a CPU install never needs the ``gpu`` extra, and the CPU tests exercise the
fallbacks, which compute exactly what the eager model computes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def liger_ops() -> Optional[dict]:
    """Liger's autograd functions by role, or None when liger-kernel (or a CUDA device) is missing."""
    if not torch.cuda.is_available():
        return None
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.rope import LigerRopeFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except Exception as e:  # ImportError, or a Triton that does not match this torch
        log.warning("liger-kernel unavailable (%s: %s); fused kernels fall back to eager", type(e).__name__, e)
        return None
    return {"rms_norm": LigerRMSNormFunction, "rope": LigerRopeFunction, "swiglu": LigerSiLUMulFunction,
            "linear_ce": LigerFusedLinearCrossEntropyFunction}


# ------------------------------------------------------------------------------------------------ ops
def liger_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> Optional[torch.Tensor]:
    """x (..., D), weight (D,) -> (..., D) like the eager RMSNorm (inverse RMS in fp32, "llama" casting);
    None when the kernel cannot run here (the caller then runs its eager code)."""
    ops = liger_ops()
    if ops is None or not x.is_cuda:
        return None
    return ops["rms_norm"].apply(x, weight, eps, 0.0, "llama", False)


def liger_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q (B, H, L, D), k (B, Hkv, L, D), cos/sin (B, 1, L, D) rotate-half tables -> rotated (q, k), or None.

    Liger writes into q and k's storage; both are fresh projection outputs that nothing else reads."""
    ops = liger_ops()
    if ops is None or not q.is_cuda:
        return None
    q_rot, k_rot = ops["rope"].apply(q, k, cos, sin)
    return q_rot, k_rot


def liger_swiglu(gate: torch.Tensor, up: torch.Tensor) -> Optional[torch.Tensor]:
    """silu(gate) * up in one kernel (both (..., F)), or None."""
    ops = liger_ops()
    if ops is None or not gate.is_cuda:
        return None
    return ops["swiglu"].apply(gate, up)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, fused: bool) -> torch.Tensor:
    """Per-row cross-entropy of the head ``weight`` (V, D) applied to rows h (N, D) against targets (N,) -> (N,)
    float32. Fused (Liger, CUDA): logits are built and reduced chunk by chunk, never (N, V) at once; the
    per-row gradient weights are applied in backward, where Liger recomputes the chunked logits. Otherwise
    the eager formula: a float32 cross-entropy of the projected rows."""
    ops = liger_ops() if fused else None
    if ops is None or not h.is_cuda or h.shape[0] == 0:
        return F.cross_entropy(F.linear(h, weight).float(), targets, reduction="none")
    loss = ops["linear_ce"].apply(h, weight, targets, None, None, -100, 0.0, 0.0, "none")[0]
    return loss.float()


# ------------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class KernelSet:
    """What a kernel choice switches on. Each op returns None where its kernel cannot run (eager follows)."""

    rms_norm: Optional[Callable] = None  # (x, weight, eps) -> y or None
    rope: Optional[Callable] = None  # (q, k, cos, sin) -> (q, k) or None
    swiglu: Optional[Callable] = None  # (gate, up) -> y or None
    fused_ce: bool = False  # heads evaluated through linear_cross_entropy in training
    compile_blocks: bool = False  # torch.compile each block's eager math (training, full-length batches)
    cudnn_attention: bool = False  # SDPA tries cuDNN's attention before FlashAttention-2


KERNELS: dict[str, KernelSet] = {
    "eager": KernelSet(),
    "liger": KernelSet(rms_norm=liger_rms_norm, rope=liger_rope, swiglu=liger_swiglu, fused_ce=True,
                       cudnn_attention=True),
    # Inside a compiled block the eager math is traced (Inductor fuses it); other calls, such as an odd-length
    # batch or decoding, run Liger's kernels.
    "compile": KernelSet(rms_norm=liger_rms_norm, rope=liger_rope, swiglu=liger_swiglu, fused_ce=True,
                         compile_blocks=True, cudnn_attention=True),
}


def kernel_set(name: str) -> KernelSet:
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"kernels {name!r} unknown; available: {sorted(KERNELS)}") from None


def attention_priority(enabled: bool, device: torch.device):
    """Context that puts cuDNN's fused attention first for SDPA (then flash, efficient, math) on CUDA."""
    if not (enabled and device.type == "cuda"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


def uses_fused_ce(model) -> bool:
    """True when ``model`` (or the module a DeepSpeed engine wraps) asks its trainer for fused heads."""
    inner = getattr(model, "module", model)
    cfg = getattr(inner, "config", None)
    return cfg is not None and kernel_set(getattr(cfg, "kernels", "eager")).fused_ce


def head_weight(model, name: str) -> torch.Tensor:
    """The (V, D) weight of head ``name`` ("lm_head" or "next_token_head"), through a DeepSpeed engine too."""
    return getattr(getattr(model, "module", model), name).weight
