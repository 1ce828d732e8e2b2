"""Tiny random-weight pipelines of each supported family, built from configs (no download), for tests and benches.

They use CLIP's real BPE vocabulary (49,408 ids, bos 49406, eos 49407), so token roles behave exactly as in the
published models, including multi-token words and [EoT] padding.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .tokenizer import BOS_ID, CLIP_VOCAB_SIZE, EOS_ID, clip_tokenizer


def tiny_text_config(hidden_size: int = 32, layers: int = 2, projection_dim: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        projection_dim=projection_dim or hidden_size,
    )


def tiny_text_encoder(config: CLIPTextConfig, with_projection: bool = False) -> CLIPTextModel:
    """A random CLIP text encoder whose final LayerNorm has a non-zero affine part, as trained encoders do.

    With the default init (weight 1, bias 0) every hidden state has zero mean over features, so all embeddings lie
    in one hyperplane and stage 1's normal equations are exactly singular, which no real model shows. A bias with
    non-zero mean keeps the direction normal to that hyperplane well represented, as in trained encoders.
    """
    enc = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    ln = next(m for n, m in enc.named_modules() if n.endswith("final_layer_norm"))
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.2)
        ln.bias.normal_(0.1, 0.2)
    return enc


def tiny_vae(latent_channels: int = 4) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
    )


def tiny_unet(cross_attention_dim: int = 32, sample_size: int = 16, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
        **extra,
    )


def tiny_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_sd_pipeline(seed: int = 0, family: str = "sd1", text_dim: int = 32) -> StableDiffusionPipeline:
    """SD-1.x (pad = [EoT]) or SD-2.x (pad = "!") layout with random weights; 32x32 images, 16x16 latents."""
    if family not in ("sd1", "sd2"):
        raise ValueError(f"family must be 'sd1' or 'sd2', got {family!r}")
    torch.manual_seed(seed)
    unet = tiny_unet(cross_attention_dim=text_dim)
    vae = tiny_vae()
    text_encoder = tiny_text_encoder(tiny_text_config(text_dim))
    tokenizer = clip_tokenizer(pad_token="<|endoftext|>" if family == "sd1" else "!")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL layout: two CLIP encoders (hidden states concatenated, pooled from the second) and added time ids."""
    torch.manual_seed(seed)
    unet = tiny_unet(
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
        transformer_layers_per_block=1,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(tiny_text_config(32)),
        text_encoder_2=tiny_text_encoder(tiny_text_config(32, projection_dim=32), with_projection=True),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=tiny_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
