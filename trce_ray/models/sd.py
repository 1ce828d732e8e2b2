"""Stable Diffusion 1.x / 2.x: one CLIP text encoder feeding every cross-attention (`attn2`) of a UNet."""

from __future__ import annotations

import re

import torch

from .base import Blocks, Conditioning, DiffusionAdapter, ParamKind, TextEmbeddings, TokenSegment
from .tokens import first_eot_index

CROSS_KV = re.compile(r"\.attn2\.to_[kv]\.weight$")
UNET_SETS = {
    "visual": re.compile(r"\.attn1\.to_(q|k|v|out\.0)\.(weight|bias)$|\.attn2\.to_q\.(weight|bias)$"),
    "kv": re.compile(r"\.attn2\.to_[kv]\.(weight|bias)$"),
}


def in_unet_blocks(name: str, blocks: str) -> bool:
    """Whether UNet parameter `name` lies in `blocks`: "all", or "encoder" (the down blocks; not mid, not up)."""
    return blocks == "all" or name.startswith("down_blocks.")


def vae_latent_shape(pipe, denoiser, height: int | None, width: int | None) -> tuple[int, int, int]:
    """(channels, h, w) of a VAE latent that the denoiser reads unpacked (UNets, SD3); default: its sample size."""
    f, size = pipe.vae_scale_factor, denoiser.config.sample_size
    return (denoiser.config.in_channels, (height // f) if height else size, (width // f) if width else size)


def clip_tokens(tokenizer, prompts: list[str]) -> torch.Tensor:
    """CLIP ids [B, 77] exactly as the pipelines tokenize: padded to the maximum length, truncated."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def clip_token_pair(tokenizers, prompts: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Ids of two CLIP tokenizers (SDXL, SD3) and, per prompt, the first position where both reached [EoT].

    diffusers' second tokenizer pads with "!" (id 0) and, as that is a special token, splits any run of "!" in a
    prompt into single "!" tokens (diffusers#4153: "!!" is one token in the first tokenizer and in OpenCLIP, two
    here), so the two [EoT]s can sit at different positions of the concatenated states. Each is found from its own
    [EoT] id, never from the pad id (a literal "!" is id 0 too) or a word count; the later one is the first row
    where both halves have read the whole prompt.
    """
    ids = [clip_tokens(t, prompts) for t in tokenizers]
    eot = [first_eot_index(i, t.eos_token_id) for i, t in zip(ids, tokenizers)]
    return ids, torch.maximum(eot[0], eot[1])


def clip_segment(tokenizer, ids: torch.Tensor, start: int = 0, joint_eot: torch.Tensor | None = None) -> TokenSegment:
    return TokenSegment("clip", start, ids, tokenizer.eos_token_id, tokenizer, True, joint_eot)


class SDAdapter(DiffusionAdapter):
    family = "sd"
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    stream_names = ("clip",)
    default_token_roles = {"clip": ("eot",)}  # the paper's choice (Sec. 4.1, Table 4)
    sampling_scheduler_class = "DDIMScheduler"  # the paper samples stage 2's trajectories with DDIM

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    @torch.no_grad()
    def encode_text(self, prompts: list[str], stream: int = 0) -> TextEmbeddings:
        if stream != 0:
            raise ValueError(f"SD has one text stream, got stream={stream}")
        ids = clip_tokens(self.tokenizer, prompts)
        enc = self.pipe.text_encoder
        hidden = enc(ids.to(enc.device))[0]
        return TextEmbeddings(hidden=hidden, segments=[clip_segment(self.tokenizer, ids)])

    def edit_targets(self, pooled: bool | None = None, blocks: Blocks = "default") -> dict[str, int]:
        blocks = self.resolve_blocks(blocks, self.default_edit_blocks)
        return {n: 0 for n, _ in self.denoiser.named_parameters() if CROSS_KV.search(n) and in_unet_blocks(n, blocks)}

    def trainable_parameter_names(self, kind: ParamKind, blocks: Blocks = "default") -> list[str]:
        blocks = self.resolve_blocks(blocks, self.default_train_blocks)
        pattern = UNET_SETS[kind]
        return [n for n, _ in self.denoiser.named_parameters() if pattern.search(n) and in_unet_blocks(n, blocks)]

    def condition(self, prompts: list[str]) -> Conditioning:
        return Conditioning(hidden=self.encode_text(prompts).hidden)

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.denoiser(latents, t, encoder_hidden_states=cond.hidden).sample

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        return vae_latent_shape(self.pipe, self.denoiser, height, width)
