"""The toy model's architecture: a genuine diffusers StableDiffusionPipeline, small enough to train on a laptop CPU.

UNet2DConditionModel + AutoencoderKL + CLIPTextModel with CLIP's real tokenizer (vocab 49408, bos 49406,
eos = pad 49407), so `adapter_for` and stage 1 treat it exactly like SD-1.x.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..config.base import Section
from ..models.tiny import tiny_scheduler
from ..models.tokenizer import BOS_ID, CLIP_VOCAB_SIZE, EOS_ID
from .world import SIZE


class ArchConfig(Section):
    """Sizes of the three networks (defaults: the shipped model)."""

    vae_channels: tuple[int, ...] = (32, 64, 64)  # one downsampling per extra level: 32x32 -> 8x8 latents
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)  # cheap at 8x8: cost is set by the first level
    unet_heads: int = 4
    text_dim: int = 64  # also the UNet's cross_attention_dim
    text_layers: int = 3
    text_heads: int = 4


def build_vae(arch: ArchConfig) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=arch.latent_channels,
        norm_num_groups=16,
        sample_size=SIZE,
    )


def build_unet(arch: ArchConfig) -> UNet2DConditionModel:
    n = len(arch.unet_channels)
    return UNet2DConditionModel(
        sample_size=SIZE // 2 ** (len(arch.vae_channels) - 1),
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=arch.unet_channels,
        layers_per_block=1,
        cross_attention_dim=arch.text_dim,
        attention_head_dim=arch.unet_heads,  # diffusers' legacy name: this is the number of heads
        norm_num_groups=16,
    )


def build_text_encoder(arch: ArchConfig) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=arch.text_dim,
            intermediate_size=arch.text_dim * 4,
            num_hidden_layers=arch.text_layers,
            num_attention_heads=arch.text_heads,
            max_position_embeddings=77,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=EOS_ID,
            projection_dim=arch.text_dim,
        )
    )


def build_scheduler() -> DDIMScheduler:
    """SD-1.x's noise schedule (scaled_linear 0.00085-0.012, 1000 steps), sampled with DDIM (the paper's sampler)."""
    return tiny_scheduler()
