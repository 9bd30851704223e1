"""Finding and loading checkpoints: the shipped embedded models by name, or a local directory.

A checkpoint directory is self-contained: ``config.json`` + safetensors shards (model) and
``tokenizer.json`` / ``tokenizer_config.json`` (tokenizer). Nothing is ever fetched from a hub,
and nothing is unpickled.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
# Shipped checkpoints, by name. "embedded" is the Stage-3 model (mask + edit heads) when present.
EMBEDDED = {
    "embedded-stage2": ASSETS / "embedded" / "stage2",
    "embedded-stage3": ASSETS / "embedded" / "stage3",
}
EMBEDDED["embedded"] = EMBEDDED["embedded-stage3"]


def resolve_model_path(name_or_path: str | Path) -> Path:
    """'embedded', 'embedded-stage2', 'embedded-stage3' or a directory -> an existing checkpoint directory."""
    key = str(name_or_path)
    path = EMBEDDED.get(key, Path(key).expanduser())
    if not (path / "config.json").is_file():
        known = ", ".join(sorted(EMBEDDED))
        raise FileNotFoundError(f"{path}: no checkpoint here (expected config.json); shipped names: {known}")
    return path


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None):
    """Load a LLaDAModel in eval mode. dtype None: fp32 on a CPU (the embedded models are stored in
    bf16 to fit the repository's file limit), the stored dtype on an accelerator."""
    from core.model import LLaDAModel

    path = resolve_model_path(name_or_path)
    if dtype is None and torch.device(device).type == "cpu":
        dtype = torch.float32
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = LLaDAModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True, **kwargs)
    return model.to(device).eval()


def load_model_and_tokenizer(name_or_path: str | Path, device: str | torch.device = "cpu",
                             dtype: Optional[torch.dtype] = None, delete_token: Optional[str] = None):
    from core.tokenizer import load_tokenizer

    path = resolve_model_path(name_or_path)
    return load_model(path, device, dtype), load_tokenizer(path, delete_token=delete_token)


def parse_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    table = {None: None, "auto": None, "fp32": torch.float32, "float32": torch.float32,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype {name!r} unknown; use one of fp32, bf16, fp16")
    return table[name]
