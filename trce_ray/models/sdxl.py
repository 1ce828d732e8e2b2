"""SDXL: two CLIP encoders whose penultimate states, concatenated (768 + 1280 = 2048), feed every `attn2.to_k/to_v`,
and the second encoder's pooled projection (1280), which reaches the UNet through `add_embedding` with the time ids.

Conditioning follows diffusers' `StableDiffusionXLPipeline.encode_prompt` and `train_text_to_image_lora_sdxl.py`:
`hidden_states[-2]` of each encoder concatenated on the last dim, pooled from encoder 2, `add_time_ids`
(original size, crop top-left, target size). Stage 1 text streams: 0 = the 2048-d token states (one factor M for all
K/V matrices), 1 = the pooled vector, read by the first 1280 input columns of `add_embedding.linear_1` (the other
columns read the time embedding and are never edited).
"""

from __future__ import annotations

import torch

from .base import Blocks, Conditioning, TextEmbeddings, TokenSegment
from .sd import SDAdapter, clip_segment, clip_token_pair

POOLED_TARGET = "add_embedding.linear_1.weight"


class SDXLAdapter(SDAdapter):
    family = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)  # not the refiner: one encoder, aesthetic-score time ids
    stream_names = ("clip", "pooled")
    default_token_roles = {"clip": ("eot",)}  # CLIP is causal: [EoT] summarises the prompt, as in SD-1.4
    default_edit_blocks = "encoder"  # paper appendix F: stage 1 only in the UNet encoder (fewer layers changed)
    default_train_blocks = "all"  # appendix F: stage 2 "basically follows A.3" (all visual layers), with LoRA
    sampling_scheduler_class = None  # the pipeline's own (EulerDiscrete in SDXL-base-1.0, DDIM in the tiny model)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, TokenSegment]:
        """(token states [B, 77, 2048], pooled [B, 1280], their token segment) for `prompts`."""
        p = self.pipe
        ids, eot = clip_token_pair((p.tokenizer, p.tokenizer_2), prompts)
        out_1 = p.text_encoder(ids[0].to(p.text_encoder.device), output_hidden_states=True)
        out_2 = p.text_encoder_2(ids[1].to(p.text_encoder_2.device), output_hidden_states=True)
        hidden = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
        # out_2[0]: encoder 2's projected pooled text_embeds; token roles use tokenizer 1 (it tokenizes as OpenCLIP)
        return hidden, out_2[0], clip_segment(p.tokenizer, ids[0], joint_eot=eot)

    def encode_text(self, prompts: list[str], stream: int = 0) -> TextEmbeddings:
        hidden, pooled, segment = self._encode(prompts)
        if stream == 0:
            return TextEmbeddings(hidden=hidden, segments=[segment])
        if stream == 1:
            return TextEmbeddings(hidden=pooled[:, None])
        raise ValueError(f"SDXL has text streams 0 (tokens) and 1 (pooled), got stream={stream}")

    def edit_targets(self, pooled: bool | None = None, blocks: Blocks = "default") -> dict[str, int]:
        out = super().edit_targets(blocks=blocks)
        if self.default_pooled_edit if pooled is None else pooled:
            out[POOLED_TARGET] = 1
        return out

    def edit_columns(self, name: str) -> slice:
        if name == POOLED_TARGET:
            return slice(0, self.pipe.text_encoder_2.config.projection_dim)  # text_embeds come before time_embeds
        return slice(None)

    def condition(self, prompts: list[str]) -> Conditioning:
        hidden, pooled, _ = self._encode(prompts)
        if self.pipe.config.get("force_zeros_for_empty_prompt", True):
            empty = torch.tensor([p == "" for p in prompts], device=hidden.device)
            hidden = torch.where(empty[:, None, None], torch.zeros_like(hidden), hidden)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return Conditioning(hidden=hidden, pooled=pooled)

    def time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """SDXL's micro-conditioning for the image these latents decode to: (h, w, 0, 0, h, w), one row per latent."""
        f = self.pipe.vae_scale_factor
        h, w = latents.shape[-2] * f, latents.shape[-1] * f
        row = torch.tensor([h, w, 0, 0, h, w], device=latents.device, dtype=latents.dtype)
        return row.expand(latents.shape[0], 6)

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        added = {"text_embeds": cond.pooled, "time_ids": self.time_ids(latents)}
        return self.denoiser(latents, t, encoder_hidden_states=cond.hidden, added_cond_kwargs=added).sample
