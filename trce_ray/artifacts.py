"""Output artifacts: atomic folders and files, safetensors deltas, and applying a delta to a base pipeline.

A delta maps denoiser parameter names (diffusers names, e.g.
`down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight`) to replacement tensors.
"""

from __future__ import annotations

import hashlib
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

MARKER = ".trce-ray-output.json"  # in every output folder: the top-level entries trce-ray wrote there
_REPO = Path(__file__).resolve().parents[1]


def _partial_name(final: Path) -> Path:
    return final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"


def write_marker(folder: Path, entries: list[str] | None = None) -> None:
    """Record that trce-ray owns `folder` and which top-level entries it wrote (default: all present now)."""
    names = sorted(entries if entries is not None else (p.name for p in folder.iterdir() if p.name != MARKER))
    (folder / MARKER).write_text(json.dumps({"written_by": "trce-ray", "entries": names}, indent=1) + "\n")


def _protected(final: Path) -> str | None:
    cwd = Path.cwd().resolve()
    if final == cwd or final in cwd.parents:
        return "the working directory or a folder above it"
    if final == _REPO or final in _REPO.parents:
        return "trce-ray's own checkout or a folder above it"
    return None


def check_replaceable(final: Path, flag: str = "--overwrite") -> None:
    """Refuse to replace `final` unless it is a folder trce-ray wrote and holds nothing else.

    Raises:
        TRCEError: `final` is a file, the working directory (or above it), or holds files trce-ray did not write.
    """
    why = _protected(final)
    if why is not None:
        raise TRCEError(f"{flag} would replace {final}, {why}; give a new folder as --output")
    if not final.is_dir():
        raise TRCEError(f"{final} is a file, not an output folder trce-ray wrote; {flag} replaces only those")
    marker = final / MARKER
    try:
        owned = set(json.loads(marker.read_text())["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        raise TRCEError(
            f"{final} was not written by trce-ray (it has no {MARKER}); {flag} replaces only folders trce-ray "
            "wrote: move it away or choose another --output"
        ) from None
    foreign = sorted(p.name for p in final.iterdir() if p.name != MARKER and p.name not in owned)
    if foreign:
        raise TRCEError(
            f"{final} holds {len(foreign)} file(s) trce-ray did not write ({foreign[0]}); {flag} would delete them: "
            "move them away or choose another --output"
        )


def check_output(final: Path, overwrite: bool) -> None:
    """The checks every output folder passes before any work: absent, or replaceable with --overwrite."""
    if final.exists() or final.is_symlink():
        if not overwrite:
            raise TRCEError(f"output folder {final} already exists; choose another --output or pass --overwrite")
        check_replaceable(final)


def remove_output(final: Path) -> None:
    """Delete an output folder trce-ray wrote (after `check_replaceable`)."""
    check_replaceable(final)
    shutil.rmtree(final)


def _remove_stale_partials(final: Path) -> None:
    """Partial folders of `final` left by a killed run (safe: the caller holds `final`'s lock)."""
    for p in final.parent.glob(f".{final.name}.partial-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden sibling folder; rename it to `final` only when the block completes.

    The output's lock is held throughout (a second run to the same folder fails at once, naming this one). An
    interrupted or failed run leaves no folder under the final name; the next run removes what a killed one left.
    With `overwrite`, an existing `final` is replaced only if trce-ray wrote it and it holds nothing else.
    """
    from .locks import hold

    final = Path(final).expanduser().resolve()
    with hold(final):
        check_output(final, overwrite)
        _remove_stale_partials(final)
        tmp = _partial_name(final)
        try:
            tmp.mkdir()
        except OSError as err:
            raise TRCEError(f"cannot write output folder {final}: {err.strerror}") from None
        try:
            yield tmp
            write_marker(tmp)
            if final.exists():
                check_replaceable(final)  # again: files may have been added while this run worked
                old = _partial_name(final)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_delta(path: str | Path, delta: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in delta.items()}, str(tmp), metadata=metadata)


def _unreadable(path, err: Exception) -> TRCEError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return TRCEError(f"{path} is not a readable safetensors file ({first}); it may be truncated: rebuild it")


def delta_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a saved artifact (format, stage, base_model, base_fingerprint, ...), read from its header.

    Raises:
        TRCEError: the file is missing or not a complete safetensors file (naming it).
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path).expanduser()
    if not p.is_file():
        raise TRCEError(f"delta file {path} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from None


def delta_format(path: str | Path) -> str:
    """The `format` metadata of a saved artifact: "trce-ray-delta" (full tensors) or "trce-ray-lora"."""
    return delta_metadata(path).get("format", "trce-ray-delta")


def load_delta(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    p = Path(path).expanduser()
    if not p.is_file():
        raise TRCEError(f"delta file {path} does not exist")
    if p.suffix != ".safetensors":
        raise TRCEError(f"delta file {path} must be a .safetensors file")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from None


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
