"""Tiny random-weight pipelines of each supported family, built from configs (no download), for tests and benches.

They use CLIP's real BPE vocabulary (49,408 ids, bos 49406, eos 49407), so token roles behave exactly as in the
published models, including multi-token words and [EoT] padding. SD3 and FLUX also get a T5 encoder with a T5-style
tokenizer derived from CLIP's vocabulary (T5's own cannot be downloaded here; see `tokenizer.t5_tokenizer`).
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from .tokenizer import BOS_ID, CLIP_VOCAB_SIZE, EOS_ID, T5_VOCAB_SIZE, clip_tokenizer, t5_tokenizer

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")


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
    return sd_pipeline(vae, text_encoder, unet, tokenizer)


def sd_pipeline(vae, text_encoder, unet, tokenizer=None) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline from given networks: DDIM, no safety checker, progress bar off (SD-1.x tokenizer
    unless one is given)."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer or clip_tokenizer(),
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


def tiny_t5_encoder(d_model: int = 32) -> T5EncoderModel:
    """A random T5 encoder in eval mode (T5's config has dropout 0.1, which `from_pretrained` switches off too)."""
    return T5EncoderModel(
        T5Config(vocab_size=T5_VOCAB_SIZE, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4)
    ).eval()


def _flow_vae() -> AutoencoderKL:
    """SD3/FLUX VAEs shift as well as scale their latents; the pipelines read both from the config."""
    vae = tiny_vae()
    vae.register_to_config(shift_factor=0.0609, scaling_factor=1.5035)
    return vae


def tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3 layout: two CLIP encoders and T5 joined into one token sequence read by `context_embedder` (no attn2);
    the CLIP states are zero-padded to T5's width, as in SD3 (2048 -> 4096)."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=48,  # = T5 d_model, wider than the two CLIP widths (16 + 16), as 4096 > 2048
        caption_projection_dim=32,
        pooled_projection_dim=32,  # the two CLIP projections concatenated
        pos_embed_max_size=32,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flow_vae(),
        text_encoder=tiny_text_encoder(tiny_text_config(16, projection_dim=16), with_projection=True),
        tokenizer=clip_tokenizer(),
        text_encoder_2=tiny_text_encoder(tiny_text_config(16, projection_dim=16), with_projection=True),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        text_encoder_3=tiny_t5_encoder(48),
        tokenizer_3=t5_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = False) -> FluxPipeline:
    """FLUX layout: CLIP gives the pooled vector, T5 the tokens read by `context_embedder`; 2x2 latent packing.

    `guidance_embeds=True` is FLUX.1-dev's guidance-distilled layout (a guidance embedding beside the timestep)."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
        guidance_embeds=guidance_embeds,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flow_vae(),
        text_encoder=tiny_text_encoder(tiny_text_config(32)),
        tokenizer=clip_tokenizer(),
        text_encoder_2=tiny_t5_encoder(32),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline(family: str, seed: int = 0):
    """A tiny random pipeline of `family` (one of FAMILIES)."""
    if family in ("sd1", "sd2"):
        return tiny_sd_pipeline(seed, family=family)
    builders = {"sdxl": tiny_sdxl_pipeline, "sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}
    if family not in builders:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")
    return builders[family](seed)
