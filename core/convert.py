"""Convert foreign checkpoints (LLaDA-8B naming, ME-DLM Llama-style naming) into a ``LLaDAModel`` directory.

The public LLaDA-8B checkpoint uses OLMo-style names (``model.transformer.blocks.N.ff_proj`` ...);
ME-DLM checkpoints use Llama names (``model.layers.N.self_attn.q_proj`` ...). Both describe the
same tensors as ours: only the names and the config keys differ (:mod:`core.source_layouts` maps
them), and both already store q/k in the rotate-half order that :mod:`core.model` uses, so no
weight is permuted.

Conversion streams: source shards are opened lazily with ``safetensors.safe_open`` and each
tensor is read, cast and appended to an output shard that is flushed once it reaches
``max_shard_size``. Peak memory is one output shard plus one tensor, never the whole model,
so an 8B checkpoint converts on a machine with less RAM than two copies of it. All key names
and shapes are validated *before* anything is written. Pickle formats (.bin/.pt) are refused.

Output: ``config.json`` (LLaDAConfig) + ``model.safetensors`` or ``model-0000i-of-0000N.safetensors``
with ``model.safetensors.index.json`` (the layout ``from_pretrained`` reads), plus the tokenizer
re-saved with the delete token renamed to ``<|del|>`` (same id) when the source has one.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

from refinery.core.source_layouts import LAYOUTS, SPECIAL_KEYS, detect_layout, map_key, read_source_config  # noqa: F401

log = logging.getLogger(__name__)

HEAD_INIT = ("copy", "fresh")
# 8B in bf16 -> 8 shards. Peak RAM is about twice one shard (the buffered tensors plus the bytes
# safetensors serialises them to), so this also bounds the converter's memory to roughly 4-5 GB.
DEFAULT_MAX_SHARD_SIZE = "2GB"
DEFAULT_DELETE_TOKEN = "<|reserved_token_0|>"  # the reserved LLaDA token ME-DLM uses as <|del|> (id 126084)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
INDEX_NAME = "model.safetensors.index.json"

# Derived buffers some exporters store; recomputed by the model, so skipped rather than refused.
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of the source checkpoint and where it goes."""

    file: Path
    key: str
    target: str
    shape: tuple[int, ...]


@dataclass
class ConversionReport:
    layout: str
    config: object  # LLaDAConfig
    shards: list[str]
    n_tensors: int
    n_params: int
    next_token_head: str  # "source", "copy", "fresh" or "none"
    tokenizer: bool
    ignored: list[str] = field(default_factory=list)


def parse_size(size: str | int) -> int:
    """'16MB', '5GB', '1.5GiB', '300kB' or a byte count -> bytes (decimal units, as transformers uses)."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size {size} must be positive")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]|[bB])?\s*", str(size))
    if not m:
        raise ValueError(f"max_shard_size {size!r}: expected a byte count or e.g. 16MB, 5GB, 2GiB")
    unit = (m.group(2) or "b").lower()
    scale = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}[unit]
    value = int(float(m.group(1)) * scale)
    if value <= 0:
        raise ValueError(f"max_shard_size {size!r} must be positive")
    return value


def find_shards(src: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (from the index when there is one)."""
    if src.is_file():
        if src.suffix in PICKLE_SUFFIXES:
            raise ValueError(f"{src}: pickle checkpoints are never loaded (they can run code); "
                             "convert it to safetensors first")
        raise ValueError(f"{src}: expected a checkpoint directory with config.json and *.safetensors")
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: source checkpoint directory not found")
    index = src / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index (needs a 'weight_map' object): {e}") from None
        shards = [src / name for name in dict.fromkeys(weight_map.values())]
        for shard in shards:
            if not shard.is_file():
                raise FileNotFoundError(f"{index}: lists shard {shard.name} which does not exist in {src}")
        return shards
    shards = sorted(src.glob("*.safetensors"))
    if shards:
        return shards
    pickles = sorted(p.name for p in src.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{src}: only pickle weights found ({', '.join(pickles)}); they are never loaded "
                         "(they can run code). Convert them to safetensors first")
    raise FileNotFoundError(f"{src}: no *.safetensors weights found")


_LLADA_8B_VOCAB = 126464


def resolve_special_ids(config_ids: dict, tokenizer, vocab_size: int, delete_token_id: Optional[int],
                        where: Path) -> dict:
    """Merge special ids from config.json, the tokenizer and (for the published vocabulary) LLaDA-8B's.

    config.json and the tokenizer must agree where both name an id: a mismatch means the model
    and tokenizer come from different checkpoints, which would silently corrupt every decode.
    """
    ids = dict(config_ids)
    if tokenizer is not None:
        from refinery.core.tokenizer import special_token_ids

        for key, value in special_token_ids(tokenizer).as_config_kwargs().items():
            if value is None:
                continue
            if key in ids and ids[key] != value:
                raise ValueError(f"{where}: {key}={ids[key]} but the tokenizer says {value}")
            ids[key] = value
    if vocab_size == _LLADA_8B_VOCAB:  # published vocabulary: fill the gaps with LLaDA-8B's ids
        from refinery.core.model import LLaDAConfig

        published = LLaDAConfig.llada_8b().to_dict()
        for key in SPECIAL_KEYS:
            if key == "delete_token_id" and tokenizer is not None:
                continue  # with a tokenizer, the delete token is whatever --delete-token names
            if ids.get(key) is None and published.get(key) is not None:
                ids[key] = published[key]
    if delete_token_id is not None:
        ids["delete_token_id"] = delete_token_id
    for key in ("mask_token_id", "eos_token_id"):
        if ids.get(key) is None:
            raise ValueError(f"{where}: no {key} in config.json and no tokenizer to read it from")
    return ids


_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Our state-dict key -> shape for ``config``, from a weightless (meta-device) model."""
    from refinery.core.model import LLaDAModel

    with torch.device("meta"):
        model = LLaDAModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def plan_tensors(key_info: dict, layout: str, expected: dict,
                 derivable: set[str]) -> tuple[list[SourceTensor], list[str]]:
    """Validate every source key against ``expected`` -> (tensors to copy in source order, ignored keys).

    ``key_info``: source key -> (file, shape, dtype string). ``derivable``: targets filled without a
    source tensor (a tied output head, an added next-token head).
    """
    plan, ignored, seen = [], [], {}
    for key, (file, shape, dtype) in key_info.items():
        if _IGNORED.search(key):
            ignored.append(key)
            continue
        target = map_key(layout, key)
        if target is None:
            raise ValueError(f"{file.name}: unknown key {key!r} for the {layout} layout")
        if target not in expected:
            raise ValueError(f"{file.name}: key {key!r} maps to {target!r}, which a model with this config.json "
                             "does not have (check n_layers / num_hidden_layers)")
        if target in seen:
            raise ValueError(f"{file.name}: keys {seen[target]!r} and {key!r} both map to {target!r}")
        if shape != expected[target]:
            raise ValueError(f"{file.name}: key {key!r} has shape {list(shape)}, expected {list(expected[target])} "
                             f"(for {target!r} under config.json)")
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{file.name}: key {key!r} has dtype {dtype}, expected a float dtype")
        seen[target] = key
        plan.append(SourceTensor(file, key, target, shape))
    missing = [t for t in expected if t not in seen and t not in derivable]
    if missing:
        listed = ", ".join(f"{t!r} {list(expected[t])}" for t in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise ValueError(f"missing key(s) for the {layout} layout: {listed}{more}")
    return plan, ignored


def _read_headers(shards: list[Path]) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """Source key -> (shard file, shape, dtype string), reading only the safetensors headers."""
    from safetensors import safe_open

    out: dict[str, tuple[Path, tuple[int, ...], str]] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                if key in out:
                    raise ValueError(f"key {key!r} appears in both {out[key][0].name} and {shard.name}")
                sl = f.get_slice(key)
                out[key] = (shard, tuple(sl.get_shape()), sl.get_dtype())
    return out


def stream_tensors(plan: list[SourceTensor], dtype: Optional[torch.dtype], tie_head: bool,
                   next_head: Optional[str], config, seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (our key, tensor) one at a time, opening each source shard once, in plan order.

    Derived tensors follow their source right away (a tied head after the embedding, a copied
    next-token head after the output head) so nothing is held back for the end.
    """
    from safetensors import safe_open

    by_file: dict[Path, list[SourceTensor]] = {}
    for item in plan:
        by_file.setdefault(item.file, []).append(item)
    # The tensor the output head comes from: the stored head, or the embedding when tied and absent.
    head_source = "embed_tokens.weight" if tie_head and not any(i.target == "lm_head.weight" for i in plan) \
        else "lm_head.weight"
    for file, items in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for item in items:
                t = f.get_tensor(item.key)
                t = t.to(dtype) if dtype is not None else t
                yield item.target, t
                if item.target != head_source:
                    continue
                if head_source != "lm_head.weight":
                    yield "lm_head.weight", t.clone()
                if next_head == "copy":
                    yield "next_token_head.weight", t.clone()
    if next_head == "fresh":
        gen = torch.Generator().manual_seed(seed)
        w = torch.empty(config.vocab_size, config.d_model).normal_(0.0, config.init_std, generator=gen)
        yield "next_token_head.weight", w.to(dtype or torch.float32)


def write_shards(tensors: Iterator[tuple[str, torch.Tensor]], dst: Path, max_bytes: int,
                 progress: bool = False, total: Optional[int] = None) -> tuple[list[str], int]:
    """Write tensors into safetensors shards of at most ``max_bytes`` (a larger single tensor gets its own
    shard) plus the index json when there is more than one -> (shard file names, parameter count)."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    parts: list[dict[str, None]] = []  # key names per written shard; tensors are freed after each flush
    written: list[Path] = []
    buf: dict[str, torch.Tensor] = {}
    size, n_params, total_bytes, weight_map = 0, 0, 0, {}

    def flush() -> None:
        path = dst / f"model-part-{len(written):05d}.safetensors.tmp"
        save_file(buf, str(path), metadata={"format": "pt"})
        written.append(path)
        parts.append({k: None for k in buf})
        buf.clear()

    for name, t in tqdm(tensors, total=total, disable=not progress, desc="convert", unit="tensor"):
        nbytes = t.numel() * t.element_size()
        if buf and size + nbytes > max_bytes:
            flush()
            size = 0
        buf[name] = t.contiguous()
        size += nbytes
        n_params += t.numel()
        total_bytes += nbytes
    if buf:
        flush()
    names = (["model.safetensors"] if len(written) == 1 else
             [f"model-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))])
    for path, name, keys in zip(written, names, parts):
        path.rename(dst / name)
        weight_map.update({k: name for k in keys})
    if len(names) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names, n_params


def _load_source_tokenizer(src: Path, delete_token: Optional[str]):
    """The source tokenizer with ``delete_token`` renamed to <|del|> (same id), or None when there is none."""
    if not (src / "tokenizer.json").is_file() and not (src / "tokenizer_config.json").is_file():
        return None
    from refinery.core.tokenizer import load_tokenizer

    try:
        return load_tokenizer(src, delete_token=delete_token)
    except ValueError as e:
        raise ValueError(f"{e} (choose another with --delete-token NAME, or --delete-token none)") from None


def _auto_delete_token(edits: bool, delete_token_id: Optional[int]) -> Optional[str]:
    """Only an edit-capable result needs <|del|> (ME-DLM's reserved token); a mask-only one keeps every
    token a real token, and an explicit id needs no token name."""
    return DEFAULT_DELETE_TOKEN if edits and delete_token_id is None else None


def _prepare_destination(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: destination must differ from the source")
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{dst}: destination exists and is not a directory")
    old = [p for p in dst.glob("*") if p.suffix in (".safetensors", ".tmp") or p.name in (INDEX_NAME, "config.json")] \
        if dst.is_dir() else []
    if old and not overwrite:
        raise ValueError(f"{dst}: already holds a checkpoint ({old[0].name}); pass overwrite=True / --overwrite")
    for p in old:  # stale shards of a bigger previous conversion would otherwise linger in the index-less dir
        p.unlink()
    dst.mkdir(parents=True, exist_ok=True)


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    layout: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    add_next_token_head: Optional[str] = None,
    delete_token: Optional[str] = "auto",
    delete_token_id: Optional[int] = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> ConversionReport:
    """Convert the checkpoint directory ``src`` (LLaDA or ME-DLM naming) into a LLaDAModel directory ``dst``.

    layout: "llada", "medlm" or None (detected from the key names). dtype: cast every tensor (None keeps
    each tensor's stored dtype). add_next_token_head: "copy" (of the output head) or "fresh" (normal
    init, seeded) for a mask-only source. delete_token: tokenizer token renamed to <|del|> whose id becomes
    ``delete_token_id`` in the config (None: none; "auto": ME-DLM's ``<|reserved_token_0|>`` when the result
    has a next-token head, none for a mask-only result); delete_token_id: the id when there is no tokenizer.
    Everything is validated before the first byte is written.
    """
    from refinery.core.model import LLaDAConfig

    src, dst = Path(src), Path(dst)
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} unknown; use one of {', '.join(LAYOUTS)}")
    if add_next_token_head not in (None, *HEAD_INIT):
        raise ValueError(f"add_next_token_head {add_next_token_head!r} unknown; use copy or fresh")
    max_bytes = parse_size(max_shard_size)
    headers = _read_headers(find_shards(src))
    layout = layout or detect_layout(headers)
    shape, tied, config_ids = read_source_config(src, layout)
    has_next = any(map_key(layout, k) == "next_token_head.weight" for k in headers)
    if delete_token == "auto":
        delete_token = _auto_delete_token(has_next or add_next_token_head is not None, delete_token_id)
    tokenizer = _load_source_tokenizer(src, delete_token)
    if tokenizer is not None and delete_token_id is not None:
        raise ValueError(f"{src}: has a tokenizer, so name the delete token (--delete-token) instead of giving its id")
    ids = resolve_special_ids(config_ids, tokenizer, shape["vocab_size"], delete_token_id, src / "config.json")
    if delete_token is None and delete_token_id is None:
        ids.pop("delete_token_id", None)
    if has_next and add_next_token_head:
        raise ValueError(f"{src}: already has a next-token head; drop add_next_token_head / --add-next-token-head")
    config = LLaDAConfig(**shape, **ids, next_token_head=has_next or add_next_token_head is not None)
    derivable = {"lm_head.weight"} if tied else set()
    if add_next_token_head:
        derivable.add("next_token_head.weight")
    expected = expected_shapes(config)
    plan, ignored = plan_tensors(headers, layout, expected, derivable)

    _prepare_destination(src, dst, overwrite)
    tensors = stream_tensors(plan, dtype, tied, add_next_token_head, config, seed)
    shards, n_params = write_shards(tensors, dst, max_bytes, progress, total=len(expected))
    if dtype is not None:
        config.dtype = str(dtype).removeprefix("torch.")
    config.save_pretrained(str(dst))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(dst))
    log.info("converted %s (%s layout) -> %s: %d tensors, %d params, %d shard(s)",
             src, layout, dst, len(plan), n_params, len(shards))
    head = "source" if has_next else (add_next_token_head or "none")
    return ConversionReport(layout=layout, config=config, shards=shards, n_tensors=len(expected), n_params=n_params,
                            next_token_head=head, tokenizer=tokenizer is not None, ignored=ignored)
