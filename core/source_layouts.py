"""The two foreign checkpoint layouts refinery converts: key names and config.json keys.

``llada``: the public LLaDA-8B checkpoint's OLMo-style names (``model.transformer.blocks.N.ff_proj``);
``medlm``: ME-DLM's Llama names (``model.layers.N.self_attn.q_proj``). ``map_key`` renames a source
tensor, ``detect_layout`` tells the two apart from the keys, ``read_source_config`` turns the source
config.json into :class:`core.model.LLaDAConfig` arguments and refuses architecture switches our model
does not implement. :mod:`core.convert` streams the tensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

LAYOUTS = ("llada", "medlm")

# Source key (after stripping an optional leading "model.") -> our key. {0} is the layer index.
_LLADA_RULES = [
    (r"transformer\.wte\.weight", "embed_tokens.weight"),
    (r"transformer\.blocks\.(\d+)\.attn_norm\.weight", "layers.{0}.attn_norm.weight"),
    (r"transformer\.blocks\.(\d+)\.q_proj\.weight", "layers.{0}.attn.q_proj.weight"),
    (r"transformer\.blocks\.(\d+)\.k_proj\.weight", "layers.{0}.attn.k_proj.weight"),
    (r"transformer\.blocks\.(\d+)\.v_proj\.weight", "layers.{0}.attn.v_proj.weight"),
    (r"transformer\.blocks\.(\d+)\.attn_out\.weight", "layers.{0}.attn.o_proj.weight"),
    (r"transformer\.blocks\.(\d+)\.ff_norm\.weight", "layers.{0}.mlp_norm.weight"),
    (r"transformer\.blocks\.(\d+)\.ff_proj\.weight", "layers.{0}.mlp.gate_proj.weight"),  # SwiGLU gate
    (r"transformer\.blocks\.(\d+)\.up_proj\.weight", "layers.{0}.mlp.up_proj.weight"),
    (r"transformer\.blocks\.(\d+)\.ff_out\.weight", "layers.{0}.mlp.down_proj.weight"),  # in a block: down
    (r"transformer\.ln_f\.weight", "norm.weight"),
    (r"transformer\.ff_out\.weight", "lm_head.weight"),  # top level: the output head
    (r"(?:transformer\.)?next_token_head\.weight", "next_token_head.weight"),
]
_MEDLM_RULES = [
    (r"embed_tokens\.weight", "embed_tokens.weight"),
    (r"layers\.(\d+)\.input_layernorm\.weight", "layers.{0}.attn_norm.weight"),
    (r"layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight", "layers.{0}.attn.{1}_proj.weight"),
    (r"layers\.(\d+)\.post_attention_layernorm\.weight", "layers.{0}.mlp_norm.weight"),
    (r"layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", "layers.{0}.mlp.{1}_proj.weight"),
    (r"norm\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"next_token_head\.weight", "next_token_head.weight"),
]
RULES = {name: [(re.compile(p), t) for p, t in rules] for name, rules in
         (("llada", _LLADA_RULES), ("medlm", _MEDLM_RULES))}


def map_key(layout: str, key: str) -> Optional[str]:
    """Source key -> our state-dict key, or None when the layout has no such name."""
    stripped = key[len("model."):] if key.startswith("model.") else key
    for pattern, template in RULES[layout]:
        m = pattern.fullmatch(stripped)
        if m:
            return template.format(*m.groups())
    return None


def detect_layout(keys) -> str:
    """'llada' when the keys use OLMo names (``transformer.blocks``, ``wte``), 'medlm' for Llama names."""
    found = [name for name in LAYOUTS if any(map_key(name, k) not in (None, "next_token_head.weight") for k in keys)]
    if len(found) != 1:
        sample = ", ".join(sorted(keys)[:5])
        raise ValueError(f"cannot tell the checkpoint layout from its keys (layouts matched: {found or 'none'}); "
                         f"pass --layout llada|medlm. First keys: {sample}")
    return found[0]


# Architecture switches of the source configs that our model does not implement: (key, allowed values).
_LLADA_UNSUPPORTED = [
    ("alibi", (False, None)), ("include_bias", (False, None)), ("include_qkv_bias", (False, None)),
    ("attention_layer_norm", (False, None)), ("input_emb_norm", (False, None)), ("scale_logits", (False, None)),
    ("rope", (True, None)), ("layer_norm_type", ("rms", None)), ("activation_type", ("silu", "swiglu", None)),
    ("block_type", ("llama", None)), ("multi_query_attention", (False, None)),
]
_MEDLM_UNSUPPORTED = [
    ("hidden_act", ("silu", None)), ("attention_bias", (False, None)), ("mlp_bias", (False, None)),
    ("rope_scaling", (None,)),
]
SPECIAL_KEYS = ("mask_token_id", "delete_token_id", "eos_token_id", "pad_token_id", "bos_token_id",
                "eot_token_id", "start_header_token_id", "end_header_token_id")


def _require(cfg: dict, key: str, where: Path):
    if cfg.get(key) is None:
        raise ValueError(f"{where}: missing required key {key!r}")
    return cfg[key]


def _check_supported(cfg: dict, table, where: Path) -> None:
    for key, allowed in table:
        if key in cfg and cfg[key] not in allowed:
            raise ValueError(f"{where}: {key}={cfg[key]!r} is not supported by refinery's LLaDA model "
                             f"(supported: {[a for a in allowed if a is not None]})")


def _llada_shape(cfg: dict, where: Path) -> tuple[dict, bool]:
    _check_supported(cfg, _LLADA_UNSUPPORTED, where)
    d_model = _require(cfg, "d_model", where)
    mlp = cfg.get("mlp_hidden_size") or int(_require(cfg, "mlp_ratio", where) * d_model)
    n_heads = _require(cfg, "n_heads", where)
    return dict(
        vocab_size=cfg.get("embedding_size") or _require(cfg, "vocab_size", where),  # rows actually stored
        d_model=d_model, n_layers=_require(cfg, "n_layers", where), n_heads=n_heads,
        n_kv_heads=cfg.get("n_kv_heads") or n_heads, mlp_hidden_size=mlp,
        max_sequence_length=cfg.get("max_sequence_length", 4096), rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", cfg.get("layer_norm_eps", 1e-5))),
    ), bool(cfg.get("weight_tying", False))


def _medlm_shape(cfg: dict, where: Path) -> tuple[dict, bool]:
    _check_supported(cfg, _MEDLM_UNSUPPORTED, where)
    rope = cfg.get("rope_parameters") or {}  # transformers 5 nests rope_theta here
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{where}: rope_parameters.rope_type={rope['rope_type']!r} is not supported (default only)")
    d_model, n_heads = _require(cfg, "hidden_size", where), _require(cfg, "num_attention_heads", where)
    if cfg.get("head_dim") not in (None, d_model // n_heads):
        raise ValueError(f"{where}: head_dim={cfg['head_dim']} must equal hidden_size // num_attention_heads "
                         f"({d_model // n_heads})")
    return dict(
        vocab_size=_require(cfg, "vocab_size", where), d_model=d_model,
        n_layers=_require(cfg, "num_hidden_layers", where), n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads, mlp_hidden_size=_require(cfg, "intermediate_size", where),
        max_sequence_length=cfg.get("max_position_embeddings", 4096),
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
    ), bool(cfg.get("tie_word_embeddings", False))


def read_source_config(src: Path, layout: str) -> tuple[dict, bool, dict]:
    """config.json -> (LLaDAConfig shape kwargs, output head tied to the embedding?, special ids found)."""
    where = src / "config.json"
    if not where.is_file():
        raise FileNotFoundError(f"{where}: source config.json not found")
    try:
        cfg = json.loads(where.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON: {e}") from None
    shape, tied = (_llada_shape if layout == "llada" else _medlm_shape)(cfg, where)
    ids = {}
    for key in SPECIAL_KEYS:
        value = cfg.get(key)
        if isinstance(value, list):  # Llama-3 style eos lists: the first is end-of-text
            value = value[0] if value else None
        if value is not None:
            ids[key] = int(value)
    return shape, tied, ids
