"""Output artifacts: atomic folders and files, safetensors deltas, and applying a delta to a base pipeline.

A delta maps denoiser parameter names (diffusers names, e.g.
`down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight`) to replacement tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import TRCEError


def _partial_name(final: Path) -> Path:
    return final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden sibling folder; rename it to `final` only when the block completes.

    An interrupted or failed run leaves no folder under the final name (the hidden partial is removed on errors;
    a killed process may leave a `.NAME.partial-*` sibling that never looks complete).
    """
    final = Path(final).expanduser()
    if final.exists() and not overwrite:
        raise TRCEError(f"output folder {final} already exists; choose another --output or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = _partial_name(final)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; it replaces `final` only if the block completes."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_delta(path: str | Path, delta: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in delta.items()}, str(tmp), metadata=metadata)


def delta_format(path: str | Path) -> str:
    """The `format` metadata of a saved artifact: "trce-ray-delta" (full tensors) or "trce-ray-lora"."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("format", "trce-ray-delta")


def load_delta(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise TRCEError(f"delta file {path} does not exist")
    if p.suffix != ".safetensors":
        raise TRCEError(f"delta file {path} must be a .safetensors file")
    return load_file(str(p))


@torch.no_grad()
def apply_delta(module: torch.nn.Module, delta: dict[str, torch.Tensor] | str | Path) -> list[str]:
    """Copy each tensor of `delta` into the same-named parameter of `module` (the denoiser). Returns the names.

    Raises:
        TRCEError: a name is not a parameter of the module, or a shape differs (a delta from another model).
    """
    if not isinstance(delta, dict):
        delta = load_delta(delta)
    params = dict(module.named_parameters())
    for name, value in delta.items():
        if name not in params:
            raise TRCEError(f"delta holds {name!r}, which this model does not have: was it made for another model?")
        if params[name].shape != value.shape:
            raise TRCEError(
                f"delta tensor {name!r} has shape {tuple(value.shape)} but the model's is {tuple(params[name].shape)}"
            )
    for name, value in delta.items():
        params[name].copy_(value.to(dtype=params[name].dtype, device=params[name].device))
    return list(delta)
