"""FLUX.1: T5's token states (4096, up to 512 tokens, no attention mask) read by `context_embedder`; CLIP-L's pooled
vector (768) read by `time_text_embed.text_embedder.linear_1`; a guidance embedding in guidance-distilled models
(FLUX.1-dev: `guidance_embeds`).

Conditioning follows diffusers' `FluxPipeline.encode_prompt`. Latents stay unpacked `[B, C, H, W]` outside this
adapter: `predict_noise` packs them into 2x2 patches, builds `img_ids` and `txt_ids` (no batch dimension), divides
the scheduler's timestep (sigma * 1000) by 1000 as the pipeline does, and unpacks the velocity it returns.
"""

from __future__ import annotations

import torch

from .base import Conditioning, TextEmbeddings
from .dit import DiTAdapter, t5_segment, t5_tokens
from .sd import clip_tokens


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C]: one token per 2x2 patch, as `FluxPipeline._pack_latents`."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack` for latents of height h and width w."""
    b, _, c4 = tokens.shape
    x = tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """[H/2 * W/2, 3] RoPE positions (0, row, column) of the packed patches, as `_prepare_latent_image_ids`."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxAdapter(DiTAdapter):
    family = "flux"
    pipeline_classes = ("FluxPipeline",)
    stream_names = ("t5", "pooled")
    default_token_roles = {"t5": ("eot", "last")}
    default_pooled_edit = True  # UCE's FLUX script edits it too; 768-d, well spanned by the preservation prompts
    default_train_blocks = "double"  # the double-stream blocks' image side; "all" adds the single-stream blocks
    sequence_cap = 512  # FluxPipeline's max_sequence_length default and ceiling
    guidance_scale = 3.5  # FluxPipeline's default guidance embedding value (guidance-distilled models only)

    @property
    def t5_tokenizer(self):
        return self.pipe.tokenizer_2

    @torch.no_grad()
    def _tokens(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = t5_tokens(self.pipe.tokenizer_2, prompts, self.max_sequence_length)
        enc = self.pipe.text_encoder_2
        return enc(ids.to(enc.device))[0], ids

    @torch.no_grad()
    def _pooled(self, prompts: list[str]) -> torch.Tensor:
        enc = self.pipe.text_encoder
        return enc(clip_tokens(self.pipe.tokenizer, prompts).to(enc.device)).pooler_output

    def encode_text(self, prompts: list[str], stream: int = 0) -> TextEmbeddings:
        if stream == 0:
            hidden, ids = self._tokens(prompts)
            return TextEmbeddings(hidden=hidden, segments=[t5_segment(self.pipe.tokenizer_2, ids)])
        if stream == 1:
            return TextEmbeddings(hidden=self._pooled(prompts)[:, None])
        raise ValueError(f"FLUX has text streams 0 (T5 tokens) and 1 (pooled CLIP), got stream={stream}")

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.denoiser.config.get("guidance_embeds", False))

    def condition(self, prompts: list[str]) -> Conditioning:
        hidden, _ = self._tokens(prompts)
        pooled = self._pooled(prompts)
        extra = {}
        if self.guidance_embeds:
            extra["guidance"] = torch.full((len(prompts),), float(self.guidance_scale), device=hidden.device)
        return Conditioning(hidden=hidden, pooled=pooled, extra=extra)

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, _, h, w = latents.shape
        t = t.to(latents.dtype).expand(b)
        guidance = cond.extra.get("guidance")
        velocity = self.denoiser(
            hidden_states=pack(latents),
            timestep=t / 1000,
            guidance=None if guidance is None else guidance.to(latents.dtype),
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.hidden,
            txt_ids=torch.zeros(cond.hidden.shape[1], 3, device=latents.device, dtype=latents.dtype),
            img_ids=image_ids(h, w, latents.device, latents.dtype),
            return_dict=False,
        )[0]
        return unpack(velocity, h, w)

    def image_tokens(self, latent_shape: tuple[int, int, int]) -> int:
        return (latent_shape[1] // 2) * (latent_shape[2] // 2)  # one token per 2x2 patch

    def flow_sigmas(self, steps: int) -> list[float]:
        import numpy as np

        return np.linspace(1.0, 1 / steps, steps).tolist()  # FluxPipeline's own

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        f = self.pipe.vae_scale_factor
        default = self.pipe.default_sample_size * f
        h, w = height or default, width or default
        return (self.denoiser.config.in_channels // 4, 2 * (h // (f * 2)), 2 * (w // (f * 2)))

    def generation_kwargs(self, guidance: float, n_prompts: int = 1) -> dict:
        """Guidance-distilled models take `guidance` as their guidance embedding; the others (schnell, the FLUX
        toy) get true classifier-free guidance against the empty prompt, the unconditional branch of `condition`."""
        kwargs = {"max_sequence_length": self.max_sequence_length}
        if self.guidance_embeds:
            return {**kwargs, "guidance_scale": float(guidance)}
        return {**kwargs, "true_cfg_scale": float(guidance), "negative_prompt": [""] * n_prompts}
