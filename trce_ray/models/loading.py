"""Load a diffusers pipeline from a hub id, a local folder or a registered alias, safetensors-only unless pickle is
explicitly allowed.

A model alias is a name (e.g. "toy") that a plug-in registers with `register_model_alias`; `model.path` may be that
name, and `resolve_model_path` turns it into the folder the plug-in ships.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import TRCEError
from .base import DiffusionAdapter
from .flux import FluxAdapter
from .sd import SDAdapter
from .sd3 import SD3Adapter
from .sdxl import SDXLAdapter

ADAPTERS: list[type[DiffusionAdapter]] = [SDAdapter, SDXLAdapter, SD3Adapter, FluxAdapter]
PICKLE_SUFFIXES = {".bin", ".ckpt", ".pt", ".pth", ".pkl"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
MODEL_ALIASES: dict[str, Callable[[], str]] = {}


def register_model_alias(name: str, path: Callable[[], str]) -> None:
    """Let `model.path: <name>` stand for the folder `path()` returns (called when the alias is used)."""
    MODEL_ALIASES[name] = path


def resolve_model_path(path: str) -> str:
    """A registered alias (e.g. "toy", the toy plug-in's model) becomes its folder; anything else is returned as is."""
    from ..plugins import load_plugins

    load_plugins()
    alias = MODEL_ALIASES.get(path)
    return str(alias()) if alias is not None else path


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def adapter_for(pipe) -> DiffusionAdapter:
    for cls in ADAPTERS:
        if cls.matches(pipe):
            return cls(pipe)
    supported = "; ".join(f"{c.family} ({', '.join(c.pipeline_classes)})" for c in ADAPTERS)
    raise TRCEError(f"no adapter for {type(pipe).__name__}; supported families: {supported}")


def _check_local_weights(folder: Path, allow_pickle: bool) -> None:
    weights = [p for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES | {".safetensors"}]
    pickles = [p for p in weights if p.suffix in PICKLE_SUFFIXES]
    has_safe = {p.parent for p in weights if p.suffix == ".safetensors"}
    unsafe_only = [p for p in pickles if p.parent not in has_safe]
    if unsafe_only and not allow_pickle:
        raise TRCEError(
            f"model folder {folder} holds pickle weights ({unsafe_only[0].relative_to(folder)}) and no safetensors "
            "beside them; convert them to safetensors or set model.allow_pickle: true if you trust the source"
        )


def load_pipeline(model: str, allow_pickle: bool = False, dtype: str = "float32", device: str = "cpu"):
    """Load the pipeline at `model` (local folder or hub id) with the safety checker off.

    Raises:
        TRCEError: the path does not exist, holds only pickle weights, or cannot be loaded.
    """
    from diffusers import DiffusionPipeline

    path = Path(model).expanduser()
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise TRCEError(f"model {model} is a pickle checkpoint; use safetensors or set model.allow_pickle: true")
    if path.exists():
        if not path.is_dir():
            raise TRCEError(f"model path {model} is a file; pass a diffusers folder (save_pretrained layout)")
        if not (path / "model_index.json").exists():
            raise TRCEError(f"model folder {model} has no model_index.json; it is not a diffusers pipeline folder")
        _check_local_weights(path, allow_pickle)
    elif not _HUB_ID.match(model):
        raise TRCEError(f"model path {model} does not exist (and is not a hub id of the form org/name)")
    kwargs = dict(dtype=DTYPES[dtype], use_safetensors=None if allow_pickle else True)
    if not path.exists():
        kwargs["safety_checker"] = None
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path) if path.exists() else model, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TRCEError(f"could not load model {model}: {first}") from err
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_model(cfg):
    """The base pipeline of a `TRCEConfig` (`cfg.model`: path or alias, pickle policy, dtype, device)."""
    m = cfg.model
    return load_pipeline(resolve_model_path(m.path), m.allow_pickle, m.dtype, resolve_device(m.device))
