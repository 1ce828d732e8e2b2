"""LoRA for stage 2 (paper App. F: SDXL and DiT models), saved in diffusers' LoRA format.

The file holds `<component>.<module>.lora_A.weight` / `.lora_B.weight` tensors (e.g. `unet.down_blocks...to_q.lora_A
.weight`) and diffusers' `lora_adapter_metadata`, so `pipe.load_lora_weights(folder, weight_name="stage2.safetensors")`
also reads it; trce-ray applies it by merging W += (alpha / r) * B @ A, which leaves a plain model for later deltas.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from ..artifacts import save_delta
from ..errors import TRCEError


def denoiser_component(pipe, denoiser: torch.nn.Module) -> str:
    """The pipeline attribute that holds the denoiser ("unet" or "transformer"): the key prefix of LoRA files."""
    for name, module in pipe.components.items():
        if module is denoiser:
            return name
    raise TRCEError("the denoiser is not a component of this pipeline")


def add_lora(denoiser: torch.nn.Module, targets: list[str], rank: int, alpha: float | None) -> list[str]:
    """Inject LoRA layers (peft) into modules `targets`; only the LoRA tensors train. Returns their names."""
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, init_lora_weights=True))
    return [n for n, p in denoiser.named_parameters() if p.requires_grad]


def lora_tensors(trained: dict[str, torch.Tensor], adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """LoRA weights under peft's adapter-free names (`...to_q.lora_A.weight`), in fp32, from the trained tensors by
    parameter name (`...to_q.lora_A.default.weight`; under DeepSpeed the gathered fp32 masters)."""
    tag = f".{adapter_name}."
    return {n.replace(tag, "."): v.detach().float().cpu() for n, v in trained.items() if ".lora_" in n}


def save_lora(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    component: str,
    rank: int,
    alpha: float,
    targets: list[str],
    metadata: dict[str, str],
) -> None:
    adapter_meta = {
        f"{component}.r": rank,
        f"{component}.lora_alpha": alpha,
        f"{component}.target_modules": sorted(targets),
    }
    meta = {
        **metadata,
        "format": "trce-ray-lora",
        "component": component,
        "lora_adapter_metadata": json.dumps(adapter_meta, sort_keys=True),
    }
    save_delta(path, {f"{component}.{k}": v for k, v in tensors.items()}, meta)


@torch.no_grad()
def apply_lora(pipe, path: str | Path) -> list[str]:
    """Merge the LoRA file at `path` into `pipe`'s denoiser weights. Returns the names of the changed weights."""
    from ..models import adapter_for

    denoiser = adapter_for(pipe).denoiser
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    component = meta.get("component", "unet")
    adapter_meta = json.loads(meta.get("lora_adapter_metadata", "{}"))
    rank = adapter_meta.get(f"{component}.r")
    alpha = adapter_meta.get(f"{component}.lora_alpha", rank)
    if rank is None:
        raise TRCEError(f"LoRA file {path} has no rank in its lora_adapter_metadata")
    params = dict(denoiser.named_parameters())
    changed = []
    for key in sorted(tensors):
        if ".lora_A." not in key:
            continue
        module = key[len(component) + 1 :].split(".lora_A.")[0]
        name = f"{module}.weight"
        if name not in params:
            raise TRCEError(f"LoRA file {path} targets {module!r}, which this model does not have")
        down, up = tensors[key].double(), tensors[key.replace(".lora_A.", ".lora_B.")].double()
        w = params[name]
        w.copy_((w.double() + (alpha / rank) * (up @ down)).to(w.dtype))
        changed.append(name)
    return changed
