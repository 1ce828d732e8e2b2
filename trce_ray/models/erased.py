"""An erased model is a base model plus ordered artifacts (stage1.safetensors, then stage2.safetensors).

An erase output folder records its base model in `config.yaml`, so `load_erased("runs/sexual")` rebuilds the
erased pipeline from the folder alone.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..artifacts import apply_delta, delta_format, load_delta
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
):
    """Load `model` (a base model, or an erase output folder) and apply `deltas` after the folder's own artifacts."""
    from .loading import load_pipeline, resolve_device, resolve_model_path

    paths: list[Path] = []
    if is_erase_output(model):
        model, paths = erase_output_parts(model)
    pipe = load_pipeline(resolve_model_path(model), allow_pickle, dtype, resolve_device(device))
    apply_artifacts(pipe, paths + [Path(d) for d in deltas or []])
    return pipe
