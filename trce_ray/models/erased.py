"""An erased model is a base model plus ordered artifacts (stage1.safetensors, then stage2.safetensors).

An erase output folder records its base model in `config.yaml`, so `load_erased("runs/sexual")` rebuilds the
erased pipeline from the folder alone. Every artifact carries the content fingerprint of the base model it was made
from (`base_fingerprint` in its metadata); applying it to a model with other weights is refused.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..artifacts import apply_delta, delta_format, delta_metadata, load_delta
from ..errors import TRCEError

ARTIFACT_ORDER = ("stage1.safetensors", "stage2.safetensors")


def is_erase_output(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and (p / "config.yaml").is_file() and any((p / n).is_file() for n in ARTIFACT_ORDER)


def erase_output_parts(folder: str | Path) -> tuple[str, list[Path]]:
    """(base model path, ordered artifact files) recorded in an erase output folder."""
    folder = Path(folder).expanduser()
    if not is_erase_output(folder):
        raise TRCEError(f"{folder} is not an erase output folder (needs config.yaml and stage*.safetensors)")
    base = yaml.safe_load((folder / "config.yaml").read_text())["model"]["path"]
    return base, [folder / n for n in ARTIFACT_ORDER if (folder / n).is_file()]


def check_base_fingerprint(model: str, paths: list[str | Path]) -> None:
    """Refuse artifacts stamped with another base model's fingerprint than `model`'s (unstamped ones pass).

    Raises:
        TRCEError: an artifact is unreadable, or was made from a base model whose weights differ from `model`'s.
    """
    from .loading import model_fingerprint

    stamped = [(p, delta_metadata(p).get("base_fingerprint")) for p in paths]
    stamped = [(p, f) for p, f in stamped if f]
    if not stamped:
        return
    have = model_fingerprint(model)
    for p, want in stamped:
        if want != have:
            raise TRCEError(
                f"{p} was made from a base model with fingerprint {want[:12]}, but {model} has {have[:12]} (other "
                "weights); point model.path at the model it was made from, or set model.check_base: false "
                "(check_base=False in Python) to apply it anyway"
            )


def apply_artifacts(pipe, paths: list[str | Path]) -> None:
    """Apply deltas (full replacement tensors) and LoRA files, in order, to `pipe`'s denoiser."""
    from .loading import adapter_for

    denoiser = adapter_for(pipe).denoiser
    for path in paths:
        if delta_format(path) == "trce-ray-lora":
            from ..stage2.lora import apply_lora

            apply_lora(pipe, path)
        else:
            apply_delta(denoiser, load_delta(path))


def load_erased(
    model: str,
    deltas: list[str] | None = None,
    allow_pickle: bool = False,
    dtype: str = "float32",
    device: str = "auto",
    check_base: bool = True,
):
    """Load `model` (a base model, or an erase output folder) and apply `deltas` after the folder's own artifacts.

    Args:
        allow_pickle: accept pickle weights in the base model. Not taken from the folder's config.yaml: a folder
            you were handed must not be able to switch pickle on.
        check_base: refuse artifacts made from a base model whose fingerprint differs
            (`check_base_fingerprint`).

    Raises:
        TRCEError: the base model cannot be loaded, or an artifact is unreadable or was made for other weights.
    """
    from .loading import PickleRefused, load_pipeline, resolve_device, resolve_model_path

    paths: list[Path] = []
    folder = None
    if is_erase_output(model):
        folder = model
        model, paths = erase_output_parts(model)
    paths = paths + [Path(d) for d in deltas or []]
    if check_base:
        check_base_fingerprint(model, paths)
    try:
        pipe = load_pipeline(resolve_model_path(model), allow_pickle, dtype, resolve_device(device))
    except PickleRefused:
        if folder is None:
            raise
        raise TRCEError(
            f"the base model {model} of erase folder {folder} holds pickle weights, and loading them runs their code: "
            "pass --allow-pickle (allow_pickle=True in Python) if you trust them (a folder's own config.yaml cannot "
            "allow pickle)"
        ) from None
    except TRCEError as err:
        if folder is None:
            raise
        raise TRCEError(f"the base model of erase folder {folder}: {err}") from None
    apply_artifacts(pipe, paths)
    return pipe
