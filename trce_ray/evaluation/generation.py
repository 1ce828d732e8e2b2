"""Image generation: one pipeline per actor, per-image deterministic seeds, images written atomically.

Image k of a prompt row uses a CPU `torch.Generator` seeded with `seed + k`, so the initial noise does not depend on
the batch it lands in, the actor, or the device. A file that already exists is never generated again: a restarted
actor (or a rerun) skips the images of its batch that an earlier attempt wrote.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TRCEError
from .images import save_png


@dataclass(frozen=True)
class GenerationSpec:
    """Everything an actor needs to load one pipeline and generate; frozen and passed explicitly to each actor."""

    model: str  # base model (folder, hub id, "toy") or an erase output folder
    deltas: tuple[str, ...]  # applied after the folder's own artifacts, in order
    image_root: str  # absolute folder of this (model, settings) key
    steps: int = 30
    height: int | None = None
    width: int | None = None
    dtype: str = "float32"
    device: str = "auto"
    allow_pickle: bool = False
    threads: int = 1  # torch threads of a CPU actor


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_identity(model: str, deltas: list[str] | tuple[str, ...] = ()) -> dict:
    """What makes two pipelines generate the same images: the base model and the content of each artifact."""
    from ..models.erased import erase_output_parts, is_erase_output
    from ..models.loading import resolve_model_path

    artifacts: list[Path] = []
    base = model
    if is_erase_output(model):
        base, artifacts = erase_output_parts(model)
    for d in deltas:
        p = Path(d).expanduser()
        if not p.is_file() or p.suffix != ".safetensors":
            raise TRCEError(f"delta file {d} does not exist or is not a .safetensors file")
        artifacts.append(p)
    resolved = resolve_model_path(base)
    local = Path(resolved).expanduser()
    base_id = str(local.resolve()) if local.exists() else resolved
    if not local.exists() and "/" not in resolved:
        raise TRCEError(f"model {model} does not exist (a diffusers folder, an erase output folder, or a hub id)")
    return {"base": base_id, "artifacts": [_sha256(p) for p in artifacts]}


def short_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def generation_key(identity: dict, steps: int, height: int | None, width: int | None, dtype: str) -> str:
    """Folder name of the images of one (model, generation settings) pair."""
    return short_hash({"model": identity, "steps": steps, "height": height, "width": width, "dtype": dtype})


def image_relpath(set_name: str, row: int, k: int, prompt: str, seed: int, guidance: float) -> str:
    """`<set>/<row>-<k>-<hash>.png`; the hash covers what the image depends on, so an edited row regenerates."""
    h = hashlib.sha256(f"{prompt}\x00{seed}\x00{guidance!r}".encode()).hexdigest()[:8]
    return f"{set_name}/{row:05d}-{k}-{h}.png"


class ImageGenerator:
    """Ray Data callable class: holds one pipeline, maps a batch of rows to written image files."""

    def __init__(self, spec: GenerationSpec):
        import torch
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        from ..models.erased import load_erased
        from ..models.loading import adapter_for, resolve_device

        self.spec = spec
        self.device = resolve_device(spec.device)
        if self.device == "cpu":
            torch.set_num_threads(max(1, spec.threads))
        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()  # long prompts are truncated to 77 tokens, as in every published evaluation
        self.pipe = load_erased(spec.model, list(spec.deltas), spec.allow_pickle, spec.dtype, self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.adapter = adapter_for(self.pipe)
        self.root = Path(spec.image_root)

    def generate(self, prompts: list[str], seeds: list[int], guidance: float):
        """PIL images for `prompts`, image i from `torch.Generator().manual_seed(seeds[i])`.

        Guidance is applied the family's way (`DiffusionAdapter.generation_kwargs`): classifier-free guidance for
        SD/SDXL/SD3, the guidance embedding for guidance-distilled FLUX, true CFG against "" for other FLUX models.
        """
        import torch

        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        kwargs = self.adapter.generation_kwargs(float(guidance), len(prompts))
        if self.spec.height is not None:
            kwargs["height"] = self.spec.height
        if self.spec.width is not None:
            kwargs["width"] = self.spec.width
        with torch.inference_mode():
            out = self.pipe(
                list(prompts),
                num_inference_steps=self.spec.steps,
                generator=generators,
                output_type="pil",
                **kwargs,
            )
        return out.images

    def on_image_written(self, relpath: str) -> None:
        """Hook called after each image file is in place (tests count generations through it)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        relpaths = [str(r) for r in batch["relpath"]]
        todo = [i for i, r in enumerate(relpaths) if not (self.root / r).is_file()]
        generated = np.zeros(len(relpaths), dtype=bool)
        # The pipeline takes one guidance scale per call: group the batch by it (most sets use one value).
        for g in sorted({float(batch["guidance"][i]) for i in todo}):
            idx = [i for i in todo if float(batch["guidance"][i]) == g]
            images = self.generate(
                [str(batch["prompt"][i]) for i in idx], [int(batch["seed"][i]) + int(batch["k"][i]) for i in idx], g
            )
            for i, image in zip(idx, images):
                save_png(image, self.root / relpaths[i])
                self.on_image_written(relpaths[i])
                generated[i] = True
        batch["generated"] = generated
        return batch


def generate_in_process(
    spec: GenerationSpec, rows: list[dict], batch_size: int, generator_cls: type[ImageGenerator] = ImageGenerator
) -> int:
    """The same generation loop without Ray (the benchmark's baseline). Returns the number of images written."""
    gen = generator_cls(spec)
    written = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {key: np.array([r[key] for r in chunk]) for key in chunk[0]}
        written += int(gen(batch)["generated"].sum())
    return written
