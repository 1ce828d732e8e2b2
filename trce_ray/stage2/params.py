"""Which denoiser parameters stage 2 trains; everything else stays frozen (and bitwise equal)."""

from __future__ import annotations

from ..config import TrainConfig
from ..models.base import DiffusionAdapter
from .lora import add_lora


def select_trainable(adapter: DiffusionAdapter, t: TrainConfig) -> list[str]:
    """Freeze the denoiser except the chosen set (or LoRA layers on it); return the trainable parameter names.

    "visual" = self-attention + cross-attention to_q (paper Sec. 4.2); "kv" = cross-attention to_k/to_v (App. E).
    """
    den = adapter.denoiser
    if t.lora_rank is not None:
        return add_lora(den, adapter.lora_target_modules(t.params, t.blocks), t.lora_rank, t.lora_alpha)
    names = adapter.trainable_parameter_names(t.params, t.blocks)
    den.requires_grad_(False)
    params = dict(den.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    return names
