"""Load a diffusers pipeline from a hub id, a local folder or a registered alias, safetensors-only unless pickle is
explicitly allowed.

A model alias is a name (e.g. "toy") that a plug-in registers with `register_model_alias`; `model.path` may be that
name, and `resolve_model_path` turns it into the folder the plug-in ships.
"""

from __future__ import annotations

import hashlib
import json
import os
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


class PickleRefused(TRCEError):
    """The model holds pickle weights and pickle was not allowed."""


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


_FINGERPRINT_SKIP = {"vae", "safety_checker", "feature_extractor"}  # do not shape the denoiser's inputs or outputs
_FINGERPRINT_MEMO: dict[tuple, str] = {}


def model_fingerprint(path: str) -> str:
    """Content hash (sha256) of the files that shape the denoiser's predictions: denoiser, text encoders,
    tokenizers, scheduler. A hub id not on disk stands for itself ("hub:<id>").

    It names trajectory caches and is stamped into every delta (`base_fingerprint`), so an erase folder refuses a
    base model whose weights are not those it was made from. Hashing SD-1.4's 4 GB takes seconds, so results are
    remembered per file stamp (path, size, mtime) in this process and under $TRCE_CACHE_HOME/fingerprints
    (default ~/.cache/trce-ray).
    """
    root = Path(resolve_model_path(path)).expanduser()
    if not root.is_dir():
        return f"hub:{path}"
    root = root.resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and _fingerprinted(p.relative_to(root).parts))
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp in _FINGERPRINT_MEMO:
        return _FINGERPRINT_MEMO[stamp]
    memo = _memo_file(stamp)
    try:
        value = memo.read_text().strip()
    except OSError:
        value = ""
    if len(value) != 64:
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(root)).encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
        value = h.hexdigest()
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(value + "\n")
            os.replace(tmp, memo)
        except OSError:
            pass  # a read-only home only costs the hash again next time
    _FINGERPRINT_MEMO[stamp] = value
    return value


def _fingerprinted(parts: tuple[str, ...]) -> bool:
    """Model files only: not the components that do not shape predictions, and no hidden files (locks, hub caches,
    .gitattributes), which come and go without changing a weight."""
    return parts[0] not in _FINGERPRINT_SKIP and not any(p.startswith(".") for p in parts)


def _memo_file(stamp: tuple) -> Path:
    home = Path(os.environ.get("TRCE_CACHE_HOME") or Path.home() / ".cache" / "trce-ray")
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:32]
    return home / "fingerprints" / key


def _check_components(folder: Path) -> None:
    """Every component model_index.json lists must have its subfolder (diffusers' own error names only a file)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as err:
        raise TRCEError(f"model folder {folder} has an unreadable model_index.json ({err})") from None
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        if not (folder / name).is_dir():
            raise TRCEError(
                f"model folder {folder} lists component {name!r} in model_index.json but has no {name}/ folder; "
                "copy the whole pipeline folder"
            )


def _check_local_weights(folder: Path, allow_pickle: bool) -> None:
    weights = [p for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES | {".safetensors"}]
    pickles = [p for p in weights if p.suffix in PICKLE_SUFFIXES]
    has_safe = {p.parent for p in weights if p.suffix == ".safetensors"}
    unsafe_only = [p for p in pickles if p.parent not in has_safe]
    if unsafe_only and not allow_pickle:
        raise PickleRefused(
            f"model folder {folder} holds pickle weights ({unsafe_only[0].relative_to(folder)}) and no safetensors "
            "beside them; convert them to safetensors, or if you trust the source allow pickle for this command "
            "(--allow-pickle, model.allow_pickle: true, or allow_pickle=True in Python)"
        )


def load_pipeline(model: str, allow_pickle: bool = False, dtype: str = "float32", device: str = "cpu"):
    """Load the pipeline at `model` (local folder or hub id) with the safety checker off.

    Raises:
        TRCEError: the path does not exist, holds only pickle weights, or cannot be loaded.
    """
    from diffusers import DiffusionPipeline

    path = Path(model).expanduser()
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise PickleRefused(f"model {model} is a pickle checkpoint; use safetensors or set model.allow_pickle: true")
    if path.exists():
        if not path.is_dir():
            raise TRCEError(f"model path {model} is a file; pass a diffusers folder (save_pretrained layout)")
        if not (path / "model_index.json").exists():
            raise TRCEError(f"model folder {model} has no model_index.json; it is not a diffusers pipeline folder")
        _check_components(path)
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
