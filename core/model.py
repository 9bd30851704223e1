"""The LLaDA-architecture mask predictor, with an optional ME-DLM next-token head.

Read top to bottom: config, norm, rotary embedding, attention, MLP, block, model, heads.

LLaDA (Nie et al., 2025) is a Llama-shaped transformer without the causal mask: token
embedding, pre-norm RMSNorm blocks with rotary self-attention and a SwiGLU MLP, a final
norm and an untied output head that predicts the token at every position (masked or not).
ME-DLM adds a second head of the same shape, the *next-token head*, whose prediction at
position i is the token that belongs in the gap after i; it drives insertions.

The model knows nothing about sampling, losses, tokenizers or files: it maps token ids to
logits. Special token ids live on the config so that strategies and trainers read them
from one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from refinery.core.fused import KernelSet, attention_priority, kernel_set


class LLaDAConfig(PretrainedConfig):
    """Shape and special tokens of a LLaDA-architecture model.

    The defaults are a tiny CPU-sized model; :meth:`llada_8b` gives the published shape.
    """

    model_type = "refinery_llada"

    def __init__(
        self,
        vocab_size: int = 128,  # rows of the embedding and of each head
        d_model: int = 64,  # residual stream width
        n_layers: int = 2,  # transformer blocks
        n_heads: int = 4,  # attention heads (head_dim = d_model // n_heads)
        n_kv_heads: Optional[int] = None,  # key/value heads for grouped-query attention; None = n_heads
        mlp_hidden_size: int = 176,  # SwiGLU inner width
        max_sequence_length: int = 512,  # longest sequence the rotary cache is sized for
        rope_theta: float = 10000.0,  # rotary base; LLaDA-8B uses 500000
        rms_norm_eps: float = 1e-5,  # RMSNorm epsilon
        init_std: float = 0.02,  # normal init of linear and embedding weights
        next_token_head: bool = False,  # add the ME-DLM next-token head
        attn_backend: str = "sdpa",  # key into ATTENTION_BACKENDS
        kernels: str = "eager",  # key into core.fused.KERNELS (fused training paths); a run-time choice, not saved
        mask_token_id: int = 0,  # [MASK]; LLaDA-8B: 126336
        delete_token_id: Optional[int] = None,  # ME-DLM <|del|>; LLaDA-8B reserved 126084
        eos_token_id: int = 1,  # end of text; LLaDA-8B: 126081
        pad_token_id: Optional[int] = None,  # padding; LLaDA pads with EOS, so None = eos
        bos_token_id: Optional[int] = None,  # start of text; LLaDA-8B: 126080
        eot_token_id: Optional[int] = None,  # end of turn; LLaDA-8B: 126348
        start_header_token_id: Optional[int] = None,  # chat role header start; LLaDA-8B: 126346
        end_header_token_id: Optional[int] = None,  # chat role header end; LLaDA-8B: 126347
        **kwargs,
    ):
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be divisible by n_kv_heads ({n_kv_heads})")
        if attn_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attn_backend {attn_backend!r} unknown; available: {sorted(ATTENTION_BACKENDS)}")
        kernel_set(kernels)  # unknown names fail here, with the list
        for name, value in (("mask_token_id", mask_token_id), ("eos_token_id", eos_token_id),
                            ("delete_token_id", delete_token_id)):
            if value is not None and not 0 <= value < vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary (size {vocab_size})")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.mlp_hidden_size = mlp_hidden_size
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.init_std = init_std
        self.next_token_head = next_token_head
        self.attn_backend = attn_backend
        self.kernels = kernels
        self.mask_token_id = mask_token_id
        self.delete_token_id = delete_token_id
        self.eot_token_id = eot_token_id
        self.start_header_token_id = start_header_token_id
        self.end_header_token_id = end_header_token_id
        pad_token_id = eos_token_id if pad_token_id is None else pad_token_id
        kwargs["tie_word_embeddings"] = False  # LLaDA's output head is untied
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)

    def to_dict(self) -> dict:
        # Which kernels trained a model says nothing about the weights: a saved config loads eager.
        out = super().to_dict()
        out.pop("kernels", None)
        return out

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def llada_8b(cls, **overrides) -> "LLaDAConfig":
        """The published LLaDA-8B shape and special tokens (ME-DLM's <|del|> = reserved 126084)."""
        shape = dict(
            vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12288,
            max_sequence_length=4096, rope_theta=500000.0, mask_token_id=126336, delete_token_id=126084,
            eos_token_id=126081, bos_token_id=126080, eot_token_id=126348,
            start_header_token_id=126346, end_header_token_id=126347,
        )
        shape.update(overrides)
        return cls(**shape)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32 whatever the activation dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.kernels = KernelSet()  # set by LLaDAModel.set_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.kernels.rms_norm is not None and not torch.compiler.is_compiling()  # Inductor fuses the eager math
        if fused and (y := self.kernels.rms_norm(x, self.weight, self.eps)) is not None:
            return y
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotate-half rotary position embedding; cos/sin are computed per call from position ids."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self) -> torch.Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, L) -> cos, sin (B, 1, L, head_dim)."""
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, L, head_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def sdpa_attention(q, k, v, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """q (B, H, L, D), k/v (B, H, L, D), key_mask (B, 1, 1, L) bool (True = attend) or None."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=False)


def eager_attention(q, k, v, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Plain softmax attention; the reference the SDPA path is tested against."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    return scores.softmax(-1) @ v


# Attention back-ends by name: a table, not an if/else chain.
ATTENTION_BACKENDS: dict[str, Callable] = {"sdpa": sdpa_attention, "eager": eager_attention}


class KVCache:
    """Keys and values of every layer over a whole canvas, for cached bidirectional decoding.

    A forward with ``use_cache=True`` and no cache fills one from the full canvas: keys[i], values[i] are
    (B, n_kv_heads, T, head_dim), keys after rotary. A later forward on the columns [start, start + n) of
    the same canvas (``kv_cache=cache, cache_start=start``) writes its fresh keys and values over
    those columns in place and attends to all T columns: the other columns are read as cached. Which
    columns are worth caching (a prefix, or all but the active block) is the decode loop's decision.

    A *static* cache (``KVCache(static=True)``, for CUDA-graph replay, ``core.graphs``) keeps its tensors:
    its first fill allocates them laid out as the fresh keys (``empty_like``), and a later forward with
    ``kv_cache=cache, use_cache=True`` refills them in place. ``index`` (n,) long, when set, names the
    columns of the current input as a tensor instead of ``start``, so one captured graph serves any window.
    """

    def __init__(self, static: bool = False) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.start: Optional[int] = None  # column of the current input's first token; None while filling
        self.static = static  # refills write into the same tensors (a graph reads them by address)
        self.index: Optional[torch.Tensor] = None  # (n,) columns of the current input; overrides start

    @property
    def width(self) -> int:
        """T: columns covered (0 when empty)."""
        return self.keys[0].shape[2] if self.keys else 0

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, H_kv, n, D) of the current input -> keys and values to attend to, (B, H_kv, T, D)."""
        if self.start is None:  # filling: attend to the fresh keys and values, as an uncached pass does
            if not self.static:
                self.keys.append(k)
                self.values.append(v)
            elif layer_idx < len(self.keys):
                self.keys[layer_idx].copy_(k)
                self.values[layer_idx].copy_(v)
            else:  # same strides as the fresh keys: cached passes then read the layout an eager cache has
                self.keys.append(torch.empty_like(k).copy_(k))
                self.values.append(torch.empty_like(v).copy_(v))
            return k, v
        if self.index is not None:
            self.keys[layer_idx].index_copy_(2, self.index, k)
            self.values[layer_idx].index_copy_(2, self.index, v)
        else:
            end = self.start + k.shape[2]
            self.keys[layer_idx][:, :, self.start:end] = k
            self.values[layer_idx][:, :, self.start:end] = v
        return self.keys[layer_idx], self.values[layer_idx]


class Attention(nn.Module):
    """Bidirectional multi-head self-attention (optionally grouped-query), no biases."""

    def __init__(self, config: LLaDAConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx  # this layer's slot in a KVCache
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.d_model, config.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.d_model, config.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_heads * self.head_dim, config.d_model, bias=False)
        self.backend = ATTENTION_BACKENDS[config.attn_backend]
        self.kernels = KernelSet()  # set by LLaDAModel.set_kernels

    def forward(self, x, cos, sin, key_mask, cache: Optional[KVCache] = None):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        fused = self.kernels.rope is not None and not torch.compiler.is_compiling()
        rotated = self.kernels.rope(q, k, cos, sin) if fused else None
        q, k = rotated if rotated is not None else (apply_rotary(q, cos, sin), apply_rotary(k, cos, sin))
        if cache is not None:  # queries stay the input's columns; keys and values span the whole canvas
            k, v = cache.update(k, v, self.layer_idx)
        if self.n_kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        y = self.backend(q, k, v, key_mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, L, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.mlp_hidden_size, bias=False)
        self.down_proj = nn.Linear(config.mlp_hidden_size, config.d_model, bias=False)
        self.kernels = KernelSet()  # set by LLaDAModel.set_kernels

    def forward(self, x):
        if self.kernels.swiglu is not None and not torch.compiler.is_compiling():
            y = self.kernels.swiglu(self.gate_proj(x), self.up_proj(x))
            if y is not None:
                return self.down_proj(y)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(GradientCheckpointingLayer):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LLaDAConfig, layer_idx: int = 0):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.compiled: Optional[Callable] = None  # torch.compile of eager_forward (kernels "compile")
        self.compiled_shape: Optional[torch.Size] = None  # the one input shape it runs (no recompiles)

    def forward(self, x, cos, sin, key_mask, cache: Optional[KVCache] = None):
        if self.compiled is not None and cache is None and x.is_cuda and torch.is_grad_enabled():
            # Training batches share one shape; the rare random-length crop and every decoding call run
            # eager instead of paying a recompile (tens of seconds) for a shape seen once.
            if self.compiled_shape is None:
                self.compiled_shape = x.shape
            if x.shape == self.compiled_shape:
                return self.compiled(x, cos, sin, key_mask)
        return self.eager_forward(x, cos, sin, key_mask, cache)

    def eager_forward(self, x, cos, sin, key_mask, cache: Optional[KVCache] = None):
        x = x + self.attn(self.attn_norm(x), cos, sin, key_mask, cache)
        return x + self.mlp(self.mlp_norm(x))


@dataclass
class MaskPredictorOutput(ModelOutput):
    """logits (B, L, V): token at each position; next_logits (B, L, V) or None: token in the gap after each
    position (ME-DLM next-token head); hidden_states (B, L, d_model): final normed hidden states;
    kv_cache: the KVCache the pass filled or updated (``use_cache``), else None."""

    logits: Optional[torch.Tensor] = None
    next_logits: Optional[torch.Tensor] = None
    hidden_states: Optional[torch.Tensor] = None
    kv_cache: Optional[KVCache] = None


class LLaDAPreTrainedModel(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def enable_checkpointing(self) -> None:
        """Activation checkpointing on every block (transformers 5.17 renamed the method; older 5.x lack the
        new name)."""
        enable = getattr(self, "activation_checkpointing_enable", None) or self.gradient_checkpointing_enable
        enable()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, std)
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, RotaryEmbedding):
            # Not in the checkpoint (non-persistent): from_pretrained builds on the meta device and
            # would otherwise leave this buffer as uninitialised memory.
            module.inv_freq.copy_(module.frequencies())


class LLaDAModel(LLaDAPreTrainedModel):
    """Token ids -> logits of the output head and, when configured, of the next-token head."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.next_token_head = (nn.Linear(config.d_model, config.vocab_size, bias=False) if config.next_token_head
                                else None)
        self.post_init()
        self.set_kernels(config.kernels)

    def set_kernels(self, name: str) -> None:
        """Switch every module to the kernel set ``name`` of core.fused.KERNELS ("eager" restores the reference)."""
        ks = kernel_set(name)
        self.config.kernels = name
        for module in self.modules():
            if isinstance(module, (RMSNorm, Attention, MLP)):
                module.kernels = ks
            elif isinstance(module, Block):
                # Only CUDA blocks ever run compiled (see Block.forward): on a CPU-only machine, skip even
                # building the wrapper, which would import Inductor for nothing.
                compiled = ks.compile_blocks and torch.cuda.is_available()
                module.compiled = torch.compile(module.eager_forward, dynamic=False) if compiled else None
                module.compiled_shape = None

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def add_next_token_head(self, copy_output_head: bool = True) -> None:
        """Attach the ME-DLM next-token head, initialised as a copy of the output head (or fresh)."""
        head = nn.Linear(self.config.d_model, self.config.vocab_size, bias=False)
        head.to(device=self.lm_head.weight.device, dtype=self.lm_head.weight.dtype)
        with torch.no_grad():
            if copy_output_head:
                head.weight.copy_(self.lm_head.weight)
            else:
                head.weight.normal_(0.0, self.config.init_std)
        self.next_token_head = head
        self.config.next_token_head = True

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        compute_next: bool = True,
        logits_from: int = 0,
        compute_logits: bool = True,
        kv_cache: Optional[KVCache] = None,
        use_cache: bool = False,
        cache_start: int = 0,
        **kwargs,
    ) -> MaskPredictorOutput:
        """input_ids (B, L); attention_mask (B, L), 1 = real token, 0 = padding (keys only: padded query rows
        produce values nobody should read); position_ids (B, L), by default counted over real tokens so that
        a left- or right-padded row sees the same positions as the unpadded row. ``logits_from``: evaluate the heads
        only on positions >= it (generation skips the prompt's logits); hidden_states are always full length.
        ``compute_logits=False`` skips both heads (a trainer with a fused linear cross-entropy reads hidden_states).

        Cached decoding: ``use_cache=True`` without a cache fills a :class:`KVCache` from this (whole) canvas
        and returns it as ``kv_cache``. With ``kv_cache``, input_ids (B, n) are the columns
        [cache_start, cache_start + n) of a canvas of the cache's width T, attention_mask (B, T) covers the
        whole canvas (keys), default position ids are those columns' positions in it, and the cache's
        other columns stand in for the tokens not passed. ``use_cache=True`` with a static ``kv_cache``
        refills that cache in place from this whole canvas."""
        cache = kv_cache if kv_cache is not None else (KVCache() if use_cache else None)
        refill = use_cache and kv_cache is not None and kv_cache.static  # a static cache filled again in place
        if refill:
            if kv_cache.keys and kv_cache.keys[0].shape[::2] != (input_ids.shape[0], input_ids.shape[1]):
                raise ValueError(f"a refill covers the cache's whole canvas {tuple(kv_cache.keys[0].shape[::2])} "
                                 f"(batch, columns), got input_ids {tuple(input_ids.shape)}")
            cache.start = None
        elif kv_cache is not None:
            self._check_cache_call(input_ids, attention_mask, kv_cache, cache_start)
            cache.start = cache_start
        if position_ids is None:
            windowed = kv_cache is not None and not refill
            position_ids = self._positions(input_ids, attention_mask, cache_start if windowed else 0)
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(position_ids, x.dtype)
        with attention_priority(kernel_set(self.config.kernels).cudnn_attention, x.device):
            for layer in self.layers:
                x = layer(x, cos, sin, key_mask, cache)
        h = self.norm(x)
        if not compute_logits:
            return MaskPredictorOutput(hidden_states=h)
        hh = h[:, logits_from:] if logits_from else h
        next_logits = self.next_token_head(hh) if (self.next_token_head is not None and compute_next) else None
        return MaskPredictorOutput(logits=self.lm_head(hh), next_logits=next_logits, hidden_states=h,
                                   kv_cache=cache)

    @staticmethod
    def _positions(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], start: int) -> torch.Tensor:
        """(B, n) positions of the input's columns [start, start + n), counted over the real tokens of the
        (B, T) attention mask when there is one."""
        n = input_ids.shape[1]
        if attention_mask is None:
            return torch.arange(start, start + n, device=input_ids.device).expand_as(input_ids)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:start + n]

    @staticmethod
    def _check_cache_call(input_ids, attention_mask, cache: KVCache, start: int) -> None:
        T = cache.width
        if not cache.keys or cache.keys[0].shape[0] != input_ids.shape[0]:
            raise ValueError(f"kv_cache covers batch {cache.keys[0].shape[0] if cache.keys else 0}, "
                             f"input_ids has {input_ids.shape[0]} rows")
        if not (0 <= start and start + input_ids.shape[1] <= T):
            raise ValueError(f"cache_start={start} + {input_ids.shape[1]} columns exceed the cache's width {T}")
        if attention_mask is not None and attention_mask.shape[1] != T:
            raise ValueError(f"with kv_cache the attention_mask covers the whole canvas ({T} columns), "
                             f"got {attention_mask.shape[1]}")


AutoConfig.register(LLaDAConfig.model_type, LLaDAConfig)
AutoModel.register(LLaDAConfig, LLaDAModel)
