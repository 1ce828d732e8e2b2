"""Stable Diffusion 1.x / 2.x: one CLIP text encoder feeding every cross-attention (`attn2`) of a UNet."""

from __future__ import annotations

import re

import torch

from .base import Conditioning, DiffusionAdapter, ParamKind, TextEmbeddings
from .tokens import first_eot_index

_CROSS_KV = re.compile(r"\.attn2\.to_[kv]\.weight$")
_VISUAL = re.compile(r"\.attn1\.to_(q|k|v|out\.0)\.(weight|bias)$|\.attn2\.to_q\.(weight|bias)$")
_KV = re.compile(r"\.attn2\.to_[kv]\.(weight|bias)$")


class SDAdapter(DiffusionAdapter):
    family = "sd"

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(pipe).__name__ in {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"}

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    def num_text_streams(self) -> int:
        return 1

    @torch.no_grad()
    def encode_text(self, prompts: list[str], stream: int = 0) -> TextEmbeddings:
        if stream != 0:
            raise ValueError(f"SD has one text stream, got stream={stream}")
        tok = self.tokenizer
        ids = tok(
            list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        enc = self.pipe.text_encoder
        hidden = enc(ids.to(enc.device))[0]
        return TextEmbeddings(hidden=hidden, input_ids=ids, eot_index=first_eot_index(ids, tok.eos_token_id))

    def edit_targets(self) -> dict[str, int]:
        return {n: 0 for n, _ in self.denoiser.named_parameters() if _CROSS_KV.search(n)}

    def trainable_parameter_names(self, kind: ParamKind) -> list[str]:
        pattern = {"visual": _VISUAL, "kv": _KV}[kind]
        return [n for n, _ in self.denoiser.named_parameters() if pattern.search(n)]

    def condition(self, prompts: list[str]) -> Conditioning:
        return Conditioning(hidden=self.encode_text(prompts).hidden)

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.denoiser(latents, t, encoder_hidden_states=cond.hidden).sample

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        size = self.denoiser.config.sample_size
        return (self.denoiser.config.in_channels, (height // f) if height else size, (width // f) if width else size)
