"""The FLUX toy's architecture: a genuine diffusers FluxPipeline, small enough to train on a laptop CPU.

`FluxTransformer2DModel` (double- and single-stream blocks, no guidance embedding: trained with classifier-free
dropout, see docs/toy.md), the project's T5-style tokenizer and a T5 encoder for the tokens `context_embedder`
reads, a CLIP text encoder for the pooled vector `time_text_embed.text_embedder.linear_1` reads, the SD toy's
trained `AutoencoderKL` (32x32 images -> 4x8x8 latents -> 16 packed tokens of 16 channels) and
`FlowMatchEulerDiscreteScheduler`, so `adapter_for`, stage 1 and stage 2 treat it exactly like FLUX.1.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from pydantic import model_validator
from transformers import T5Config, T5EncoderModel

from ..config.base import Section
from ..models.tokenizer import T5_VOCAB_SIZE, clip_tokenizer, t5_tokenizer
from .model import ArchConfig, build_text_encoder


class FluxArchConfig(Section):
    """Sizes of the FLUX toy's networks (defaults: the shipped model)."""

    latent_channels: int = 4  # the SD toy VAE's; packed 2x2 into 16 transformer input channels
    heads: int = 3
    head_dim: int = 32  # inner width heads * head_dim = 96
    rope_axes: tuple[int, int, int] = (8, 12, 12)  # FLUX's (text, row, column) RoPE split; sums to head_dim
    double_layers: int = 2
    single_layers: int = 2
    t5_dim: int = 64  # also the transformer's joint_attention_dim
    t5_layers: int = 2
    t5_heads: int = 4
    t5_length: int = 32  # T5 tokens per prompt (max_sequence_length); captions <= 20, pack prompts <= 24
    clip_dim: int = 64  # also the transformer's pooled_projection_dim
    clip_layers: int = 2
    clip_heads: int = 4

    @model_validator(mode="after")
    def _rope_fits_heads(self):
        if sum(self.rope_axes) != self.head_dim or any(a % 2 for a in self.rope_axes):
            raise ValueError(f"rope_axes {self.rope_axes} must be even and sum to head_dim {self.head_dim}")
        return self


def build_transformer(arch: FluxArchConfig) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=arch.latent_channels * 4,
        num_layers=arch.double_layers,
        num_single_layers=arch.single_layers,
        attention_head_dim=arch.head_dim,
        num_attention_heads=arch.heads,
        joint_attention_dim=arch.t5_dim,
        pooled_projection_dim=arch.clip_dim,
        guidance_embeds=False,
        axes_dims_rope=arch.rope_axes,
    )


def build_t5(arch: FluxArchConfig) -> T5EncoderModel:
    """T5 v1.1-style encoder (gated GELU, no dropout: T5's published configs set 0.1, training here uses none)."""
    return T5EncoderModel(
        T5Config(
            vocab_size=T5_VOCAB_SIZE,
            d_model=arch.t5_dim,
            d_kv=arch.t5_dim // arch.t5_heads,
            d_ff=arch.t5_dim * 4,
            num_layers=arch.t5_layers,
            num_heads=arch.t5_heads,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
        )
    )


def build_clip(arch: FluxArchConfig):
    """CLIP text encoder for the pooled vector (its `pooler_output`: the final-LayerNorm state at [EoT])."""
    return build_text_encoder(
        ArchConfig(text_dim=arch.clip_dim, text_layers=arch.clip_layers, text_heads=arch.clip_heads)
    )


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Plain rectified-flow Euler: shift 1, no resolution shift (16 image tokens), sigmas linspace(1, 1/n, n)."""
    return FlowMatchEulerDiscreteScheduler()


def flux_vae(vae: AutoencoderKL, shift: float) -> AutoencoderKL:
    """The SD toy VAE with FLUX's latent convention: (z - shift_factor) * scaling_factor (weights unchanged)."""
    vae.register_to_config(shift_factor=float(shift))
    return vae


def flux_pipeline(vae, clip, t5, transformer, t5_length: int) -> FluxPipeline:
    """A FluxPipeline from given networks; T5 pads to `t5_length` (FLUX gives T5 no mask: the length is part of the
    model input, and the adapter reads it from the tokenizer)."""
    pipe = FluxPipeline(
        scheduler=build_scheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer(max_length=t5_length),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
