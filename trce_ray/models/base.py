"""The small interface every model family implements, so stage 1, stage 2 and evaluation never branch on family.

Families differ in how text reaches the denoiser: SD-1.x/2.x feed one CLIP encoder's hidden states into every
cross-attention `to_k`/`to_v`; SDXL concatenates two encoders and adds pooled embeddings; SD3/FLUX have no separate
cross-attention and project text through `context_embedder`. The adapter hides that behind "text streams" (one per
vector space that editable projections read) and a `Conditioning` bundle that `predict_noise` consumes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

ParamKind = Literal["visual", "kv"]


@dataclass
class TextEmbeddings:
    """What one text stream produces for a batch of prompts (stage 1 reads rows of `hidden`)."""

    hidden: torch.Tensor  # [B, L, D]: exactly what the editable projections see
    input_ids: torch.Tensor  # [B, L]
    eot_index: torch.Tensor  # [B]: position of the first [EoT], from token ids


@dataclass
class Conditioning:
    """Everything the denoiser needs besides latents and t, batched along dim 0."""

    hidden: torch.Tensor  # [B, L, D] encoder_hidden_states
    pooled: torch.Tensor | None = None  # [B, P] (SDXL, SD3, FLUX)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. SDXL time_ids

    def _map(self, fn) -> Conditioning:
        return Conditioning(
            fn(self.hidden),
            None if self.pooled is None else fn(self.pooled),
            {k: fn(v) for k, v in self.extra.items()},
        )

    def to(self, device=None, dtype=None) -> Conditioning:
        return self._map(lambda x: x.to(device=device, dtype=dtype if x.is_floating_point() else None))

    def __getitem__(self, idx) -> Conditioning:
        return self._map(lambda x: x[idx])

    def __len__(self) -> int:
        return self.hidden.shape[0]

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        first = parts[0]
        return Conditioning(
            torch.cat([p.hidden for p in parts]),
            None if first.pooled is None else torch.cat([p.pooled for p in parts]),
            {k: torch.cat([p.extra[k] for p in parts]) for k in first.extra},
        )


class DiffusionAdapter(ABC):
    """One model family behind one interface. Construct with a loaded diffusers pipeline."""

    family: ClassVar[str]

    def __init__(self, pipe):
        self.pipe = pipe

    @classmethod
    @abstractmethod
    def matches(cls, pipe) -> bool:
        """Whether this adapter handles `pipe`."""

    @property
    @abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The UNet or transformer; its parameter names are the names deltas use."""

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    @abstractmethod
    def tokenizer(self):
        """The tokenizer whose ids define token roles ([SoT], [KEY], first [EoT])."""

    @abstractmethod
    def num_text_streams(self) -> int:
        """How many distinct text vector spaces feed editable projections."""

    @abstractmethod
    def encode_text(self, prompts: list[str], stream: int = 0) -> TextEmbeddings:
        """Hidden states of one text stream for `prompts`, padded to the model's max length."""

    @abstractmethod
    def edit_targets(self) -> dict[str, int]:
        """Stage-1 editable weight names (denoiser parameter names) mapped to the text stream each one reads."""

    @abstractmethod
    def trainable_parameter_names(self, kind: ParamKind) -> list[str]:
        """Stage-2 parameter sets: "visual" (self-attention + cross-attention to_q) or "kv" (cross-attn to_k/to_v)."""

    @abstractmethod
    def condition(self, prompts: list[str]) -> Conditioning:
        """Conditioning for `predict_noise`; "" gives the unconditional embedding."""

    @abstractmethod
    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's prediction for (z_t, t, c)."""

    @abstractmethod
    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(channels, h, w) of one latent at the given image size (default: the model's native size)."""

    def lora_target_modules(self, kind: ParamKind) -> list[str]:
        """Module names (without `.weight`) of the chosen set, for peft LoRA."""
        return sorted({n.rsplit(".", 1)[0] for n in self.trainable_parameter_names(kind) if n.endswith(".weight")})
