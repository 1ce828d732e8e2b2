"""Train the FLUX toy from a seed: transformer + T5 + CLIP on the rectified-flow objective, with classifier-free
dropout (the world's 10% empty captions), over the SD toy's renders, captions and trained VAE.

    trce-ray toy train --family flux --output runs/flux-toy                 # the shipped recipe
    trce-ray toy train --family flux --output trce_ray/toy/weights-flux --overwrite   # refresh the shipped weights

The VAE and the attribute classifier are the SD toy's shipped ones (the VAE's latents are 4x8x8, which FLUX packs
into 16 tokens); only the VAE's `shift_factor` is new, the mean latent of the encoded dataset. Every random draw
comes from the seed, so the same command on the same software and thread count gives bit-identical weights.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from ..artifacts import atomic_dir, write_json
from ..errors import TRCEError
from .flux_model import FluxArchConfig, build_clip, build_t5, build_transformer, flux_pipeline, flux_vae
from .settings import Recipe
from .train import CONFIG_FILE, LOG_FILE, PIPELINE_DIR, _caption_ids, encode_dataset, optimise


class FluxTrainConfig(Recipe):
    """The FLUX toy's whole recipe. Defaults reproduce the shipped weights."""

    seed: int = 0
    arch: FluxArchConfig = Field(default_factory=FluxArchConfig)
    dataset_size: PositiveInt = 12000  # scenes rendered and VAE-encoded once (the SD toy's, same seed)
    steps: PositiveInt = 1800
    batch: PositiveInt = 64
    transformer_lr: PositiveFloat = 1e-3
    text_lr: PositiveFloat = 1e-3
    warmup: PositiveInt = 100
    ema_decay: float = 0.995  # weights shipped are the EMA (warm-up (1+k)/(10+k))
    save_dtype: Literal["float16", "float32"] = "float16"  # storage dtype of the pipeline (loaded as float32)
    log_every: PositiveInt = 50
    # probability that a training caption reaches T5 only (CLIP, hence the pooled vector, reads ""): 0 in the shipped
    # recipe, whose model then reads colour from the pooled vector alone (docs/toy.md, "Which path carries colour")
    pooled_drop: float = Field(0.0, ge=0.0, le=1.0)


def _shipped_vae():
    """The SD toy's trained VAE, float32, as its own copy (the shipped pipeline is never modified)."""
    from diffusers import AutoencoderKL

    from .assets import toy_pipeline_dir

    return AutoencoderKL.from_pretrained(str(toy_pipeline_dir() / "vae"), torch_dtype=torch.float32).eval()


def flow_pair(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow: the point x_t = (1 - t) x0 + t noise and its velocity target noise - x0 (FLUX's convention,
    which `FlowMatchEulerDiscreteScheduler.step` integrates from sigma 1 down to 0)."""
    tt = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - tt) * x0 + tt * noise, noise - x0


def train_flux(cfg: FluxTrainConfig, vae, progress: bool = True):
    """Transformer, T5 and CLIP on velocity prediction v = noise - x0 at x_t = (1 - t) x0 + t noise, t ~ U(0, 1)
    (FLUX's sampler then walks sigmas linspace(1, 1/n, n) with no shift). Returns the pipeline and the log."""
    from ..concepts import load_templates
    from ..models import adapter_for
    from ..models.base import Conditioning
    from ..models.tokenizer import clip_tokenizer, t5_tokenizer
    from .world import caption

    clock = (time.perf_counter(), time.process_time())
    means, stds, scenes = encode_dataset(cfg.seed, cfg.dataset_size, vae, progress)
    timings = {"encode_s": time.perf_counter() - clock[0], "encode_cpu_s": time.process_time() - clock[1]}
    shift = float(means.mean())
    vae = flux_vae(vae, shift)
    scale = vae.config.scaling_factor
    torch.manual_seed(cfg.seed + 5)
    rng = np.random.default_rng([cfg.seed, 5])
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    templates = load_templates()
    arch = cfg.arch
    t5, clip, transformer = build_t5(arch).train(), build_clip(arch).train(), build_transformer(arch).train()
    pipe = flux_pipeline(vae, clip, t5, transformer, arch.t5_length)
    adapter = adapter_for(pipe)
    t5_tok, clip_tok = t5_tokenizer(max_length=arch.t5_length), clip_tokenizer()
    t5_cache, clip_cache = {}, {}
    drop_rng = np.random.default_rng([cfg.seed, 6])  # its own stream: pooled_drop 0 leaves the recipe bit-identical

    def step_loss(step: int):
        idx = torch.randint(0, len(scenes), (cfg.batch,), generator=gen)
        captions = [caption(rng, scenes[i], templates) for i in idx.tolist()]
        x0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen) - shift) * scale
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.rand(len(idx), generator=gen)
        xt, velocity = flow_pair(x0, noise, t)
        clip_captions = captions
        if cfg.pooled_drop > 0:
            dropped = drop_rng.random(len(captions)) < cfg.pooled_drop
            clip_captions = ["" if d else c for c, d in zip(captions, dropped, strict=True)]
        cond = Conditioning(
            hidden=t5(_caption_ids(t5_tok, captions, t5_cache))[0],
            pooled=clip(_caption_ids(clip_tok, clip_captions, clip_cache)).pooler_output,
        )
        err = (adapter.predict_noise(xt, t * 1000, cond) - velocity).pow(2).mean()
        return err, float(err.detach())

    groups = [
        {"params": list(transformer.parameters()), "lr": cfg.transformer_lr},
        {"params": list(t5.parameters()) + list(clip.parameters()), "lr": cfg.text_lr},
    ]
    clock = (time.perf_counter(), time.process_time())
    rows = optimise(groups, cfg, cfg.steps, step_loss, "toy train: FLUX transformer + T5 + CLIP", progress)
    timings |= {"steps_s": time.perf_counter() - clock[0], "steps_cpu_s": time.process_time() - clock[1]}
    for m in (t5, clip, transformer):
        m.eval()
    return pipe, {"losses": rows, "distinct_captions": len(t5_cache), "vae_shift_factor": shift, "timings": timings}


def train_flux_toy(cfg: FluxTrainConfig, output: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Train the FLUX toy and write it to `output` atomically (`pipeline/`, recipe, log). Returns the log."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise TRCEError(f"output folder {output} already exists; choose another --output or pass --overwrite")
    t0, c0 = time.perf_counter(), time.process_time()
    pipe, log = train_flux(cfg, _shipped_vae(), progress)
    timings = {**log.pop("timings"), "total_s": time.perf_counter() - t0, "total_cpu_s": time.process_time() - c0}
    log = {
        "timings": timings,
        "denoiser": log,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    with atomic_dir(output, overwrite=overwrite) as tmp:
        pipe.to(getattr(torch, cfg.save_dtype)).save_pretrained(tmp / PIPELINE_DIR, safe_serialization=True)
        (tmp / CONFIG_FILE).write_text(cfg.to_yaml())
        write_json(tmp / LOG_FILE, log)
    return log
