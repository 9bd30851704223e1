"""Finding and loading checkpoints: the shipped embedded models by name, or a local directory.

A checkpoint directory is self-contained: ``config.json`` + safetensors shards (model) and
``tokenizer.json`` / ``tokenizer_config.json`` (tokenizer). Nothing is ever fetched from a hub,
and nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import sys
from pathlib import Path
from typing import Optional

import torch

from refinery.core.errors import UsageError
from refinery.core.typed import DTYPE_NAMES

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
# Shipped checkpoints, by name. "embedded" is the Stage-3 model (mask + edit heads) when present;
# stage3_medlm is Stage 3 under the `medlm` recipe, r2ft_conv the R2FT (`conv-paper`) model from stage2.
EMBEDDED = {
    "embedded-stage2": ASSETS / "embedded" / "stage2",
    "embedded-stage3": ASSETS / "embedded" / "stage3",
    "embedded-stage3_medlm": ASSETS / "embedded" / "stage3_medlm",
    "embedded-r2ft_conv": ASSETS / "embedded" / "r2ft_conv",
}
EMBEDDED["embedded"] = EMBEDDED["embedded-stage3"]


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A shipped name (``EMBEDDED``: 'embedded', 'embedded-stage2', ...) or a directory -> an existing
    checkpoint directory."""
    key = str(name_or_path)
    path = EMBEDDED.get(key, Path(key).expanduser())
    if not (path / "config.json").is_file():
        known = ", ".join(sorted(EMBEDDED))
        pickles = _pickle_files(path)
        if pickles:
            raise UsageError(f"{path}: holds {pickles[0]} but no config.json; refinery loads only safetensors "
                             f"checkpoints (config.json + *.safetensors) and never unpickles")
        raise FileNotFoundError(f"{path}: no checkpoint here (expected config.json); shipped names: {known}")
    return path


def _pickle_files(path: Path) -> list[str]:
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))


# Fields a checkpoint's config.json must give: the model's defaults are a tiny test shape, so a config
# without them would build a model that silently disagrees with the weights.
REQUIRED_CONFIG_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "mask_token_id", "eos_token_id")


def check_device(device: str | torch.device, field: str = "--device") -> str:
    """Refuse a device this machine does not have (before anything is created or loaded); returns it.

    'auto' passes (it picks the GPU where there is one)."""
    name = str(device)
    if name == "auto":
        return name
    what = f"{field} {name}" if field else name
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{what}: not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"{what}: CUDA is not available on this machine ({why}); use cpu (e.g. --device cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"{what}: no such GPU; this machine has {count} (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{what}: MPS is not available on this machine; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{what}: device type {dev.type!r} is not supported; use cpu or cuda")
    return name


def read_checkpoint_config(path: Path) -> dict:
    """config.json of a checkpoint directory, parsed and checked for the fields the model needs."""
    cfg_file = path / "config.json"
    try:
        data = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{cfg_file}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{cfg_file}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{cfg_file}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in REQUIRED_CONFIG_FIELDS if k not in data]
    if missing:
        raise UsageError(f"{cfg_file}: missing field(s) {', '.join(missing)}")
    for k in REQUIRED_CONFIG_FIELDS:
        if isinstance(data[k], bool) or not isinstance(data[k], int):
            raise UsageError(f"{cfg_file}: field {k!r} should be an integer, got {data[k]!r}")
    from refinery.core.model import LLaDAConfig

    try:
        LLaDAConfig(**{k: v for k, v in data.items() if k not in ("architectures", "model_type", "dtype",
                                                                  "transformers_version")})
    except (TypeError, ValueError) as e:
        raise UsageError(f"{cfg_file}: {e}") from None
    return data


def safetensors_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint directory: the sharded index's files, or model.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"{index}: not a safetensors index (expected a JSON 'weight_map'; {e})") from None
        files = [path / n for n in names]
        for f in files:
            if not f.is_file():
                raise UsageError(f"{f}: missing (listed in {index.name})")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    pickles = _pickle_files(path)
    if pickles:
        raise UsageError(f"{path}: holds {pickles[0]} but no model.safetensors; refinery loads only safetensors "
                         "and never unpickles (re-save the weights with safetensors)")
    raise UsageError(f"{path}: no model.safetensors (nor model.safetensors.index.json)")


def check_safetensors(file: Path) -> int:
    """Check a safetensors file is whole without loading a tensor: its header parses and the data it
    describes ends exactly at the end of the file. Returns the number of tensors."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UsageError(f"{file}: truncated ({size} bytes; not a safetensors file)")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise UsageError(f"{file}: truncated (header of {n} bytes, file of {size} bytes)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            raise UsageError(f"{file}: not a safetensors file (unreadable header)") from None
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise UsageError(f"{file}: truncated ({size} bytes, the header describes {expected})")
    if size > expected:
        raise UsageError(f"{file}: {size - expected} bytes after the data its header describes; the file is damaged")
    return len(ends)


def check_checkpoint(name_or_path: str | Path) -> Path:
    """Everything about a checkpoint directory that can be checked without loading tensors:
    config.json and every safetensors file's header against its size. Returns the directory."""
    path = resolve_model_path(name_or_path)
    read_checkpoint_config(path)
    for f in safetensors_files(path):
        check_safetensors(f)
    return path


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None):
    """Load a LLaDAModel in eval mode. dtype None: fp32 on a CPU (the embedded models are stored in
    bf16 to fit the repository's file limit), the stored dtype on an accelerator."""
    from refinery.core.model import LLaDAModel

    check_device(device)
    path = check_checkpoint(name_or_path)
    if dtype is None and torch.device(device).type == "cpu":
        dtype = torch.float32
    kwargs = {"dtype": dtype} if dtype is not None else {}
    with _quiet_loading_bar():
        model = LLaDAModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True, **kwargs)
    return model.to(device).eval()


@contextlib.contextmanager
def _quiet_loading_bar():
    """transformers' "Loading weights" bar only where someone watches (stderr is a terminal): in logs and
    pipes it is noise in front of the one line an error should be."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_model_and_tokenizer(name_or_path: str | Path, device: str | torch.device = "cpu",
                             dtype: Optional[torch.dtype] = None, delete_token: Optional[str] = None):
    from refinery.core.tokenizer import check_tokenizer_dir, load_tokenizer

    path = check_tokenizer_dir(resolve_model_path(name_or_path))  # before the weights: a missing tokenizer fails fast
    return load_model(path, device, dtype), load_tokenizer(path, delete_token=delete_token)


def parse_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """A config's dtype name (core.typed.DTYPE_NAMES: "bf16", "float32", "auto", ...) -> torch dtype;
    None and "auto" -> None (the checkpoint's own)."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype {name!r} unknown; use one of fp32, bf16, fp16")
    attr = DTYPE_NAMES[name]
    return None if attr is None else getattr(torch, attr)
