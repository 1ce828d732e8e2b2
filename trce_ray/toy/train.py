"""Train the toy world from a seed: VAE, then UNet + text encoder, then the attribute classifier.

    trce-ray toy train --output runs/toy                     # the shipped model's recipe
    trce-ray toy train --output trce_ray/toy/weights --overwrite   # refresh the shipped weights

Every random draw comes from the seed (torch and numpy generators seeded per phase), and the run is single-threaded
unless OMP_NUM_THREADS says otherwise, so the same command on the same software gives bit-identical weights.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt
from tqdm.auto import tqdm

from ..artifacts import atomic_dir, write_json
from ..errors import TRCEError
from ..models.tiny import sd_pipeline
from .classifier import ToyClassifier, save_classifier
from .model import ArchConfig, build_scheduler, build_text_encoder, build_unet, build_vae
from .settings import Recipe
from .world import render_batch

PIPELINE_DIR, CLASSIFIER_FILE = "pipeline", "classifier.safetensors"
CONFIG_FILE, LOG_FILE = "train_config.yaml", "train_log.json"


class ToyTrainConfig(Recipe):
    """The whole recipe. Defaults reproduce the shipped weights."""

    seed: int = 0
    arch: ArchConfig = Field(default_factory=ArchConfig)
    vae_steps: PositiveInt = 600
    vae_batch: PositiveInt = 32
    vae_lr: PositiveFloat = 1e-3
    vae_kl: float = 1e-5  # small KL keeps latents near unit scale without blurring colours
    dataset_size: PositiveInt = 12000  # scenes rendered and VAE-encoded once for the denoiser phase
    unet_steps: PositiveInt = 1800
    unet_batch: PositiveInt = 64
    unet_lr: PositiveFloat = 1.5e-3
    text_lr: PositiveFloat = 1.5e-3
    warmup: PositiveInt = 100
    min_snr_gamma: PositiveFloat = 5.0
    ema_decay: float = 0.995  # weights shipped are the EMA (warm-up (1+k)/(10+k))
    clf_steps: PositiveInt = 400
    clf_batch: PositiveInt = 64
    clf_lr: PositiveFloat = 2e-3
    save_dtype: Literal["float16", "float32"] = "float16"  # storage dtype of the pipeline (loaded as float32)
    log_every: PositiveInt = 50


def _lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 10%."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class _Log:
    def __init__(self, every: int):
        self.every, self.buf, self.rows = every, [], []

    def add(self, step: int, loss: float, bar) -> None:
        self.buf.append(loss)
        if (step + 1) % self.every == 0:
            mean = sum(self.buf) / len(self.buf)
            self.rows.append({"step": step + 1, "loss": mean})
            bar.set_postfix(loss=f"{mean:.4f}")
            self.buf = []


def _images(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, list]:
    imgs, scenes = render_batch(rng, n)
    return torch.from_numpy(imgs), scenes


def train_vae(cfg: ToyTrainConfig, progress: bool = True):
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    vae = build_vae(cfg.arch).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup, cfg.vae_steps))
    log = _Log(cfg.log_every)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    bar = tqdm(range(cfg.vae_steps), desc="toy train: VAE", disable=not progress)
    for step in bar:
        x, _ = _images(rng, cfg.vae_batch)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + cfg.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        log.add(step, float(loss.detach()), bar)
    vae.eval()
    with torch.no_grad():  # SD convention: latents * scaling_factor have unit variance
        x, _ = _images(rng, 256)
        std = float(vae.encode(x).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae, {"losses": log.rows, "latent_std": std}


def _caption_ids(tokenizer, captions: list[str], cache: dict) -> torch.Tensor:
    missing = [c for c in dict.fromkeys(captions) if c not in cache]
    if missing:
        ids = tokenizer(
            missing, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        cache.update(zip(missing, ids))
    return torch.stack([cache[c] for c in captions])


@torch.no_grad()
def encode_dataset(seed: int, size: int, vae, progress: bool = True):
    """Render `size` scenes once and keep their latent posteriors (mean, std): the VAE encoder then costs nothing
    per training step, while captions and latent samples are drawn afresh every time a scene is used."""
    rng = np.random.default_rng([seed, 4])
    means, stds, scenes = [], [], []
    chunks = range(0, size, 256)
    for i in tqdm(chunks, desc="toy train: encode dataset", disable=not progress):
        x, sc = _images(rng, min(256, size - i))
        post = vae.encode(x).latent_dist
        means.append(post.mean)
        stds.append(post.std)
        scenes += sc
    return torch.cat(means), torch.cat(stds), scenes


def optimise(groups: list[dict], cfg, steps: int, step_loss, desc: str, progress: bool = True) -> list[dict]:
    """AdamW (no weight decay: unused vocabulary rows keep their initial values) over parameter `groups`, linear
    warm-up then cosine, gradient clipping at 1, and an EMA (warm-up (1+k)/(10+k)) copied into the parameters at
    the end. `step_loss(step)` returns (the loss to minimise, the value to log). Returns the logged means."""
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup, steps))
    params = [p for g in groups for p in g["params"]]
    ema = [p.detach().clone() for p in params]
    log = _Log(cfg.log_every)
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        loss, logged = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        log.add(step, logged, bar)
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return log.rows


def train_denoiser(cfg: ToyTrainConfig, vae, progress: bool = True):
    """UNet + text encoder on epsilon prediction with SD-1.x's noise schedule, min-SNR weighting and an EMA."""
    from ..concepts import load_templates
    from ..models.tokenizer import clip_tokenizer
    from .world import caption

    means, stds, scenes = encode_dataset(cfg.seed, cfg.dataset_size, vae, progress)
    torch.manual_seed(cfg.seed + 2)
    rng = np.random.default_rng([cfg.seed, 2])
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    templates = load_templates()
    tokenizer = clip_tokenizer()
    text_encoder = build_text_encoder(cfg.arch).train()
    unet = build_unet(cfg.arch).train()
    noise_sched = build_scheduler()
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    cache = {}
    scale = vae.config.scaling_factor

    def step_loss(step: int):
        idx = torch.randint(0, len(scenes), (cfg.unet_batch,), generator=gen)
        captions = [caption(rng, scenes[i], templates) for i in idx.tolist()]
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        hidden = text_encoder(_caption_ids(tokenizer, captions, cache))[0]
        err = (unet(zt, t, encoder_hidden_states=hidden).sample - noise).pow(2).mean(dim=(1, 2, 3))
        # min-SNR-gamma (Hang et al. 2023): stop easy low-noise steps from dominating; colour is set at high noise
        weight = snr[t].clamp(max=cfg.min_snr_gamma) / snr[t]
        return (weight * err).mean(), float(err.detach().mean())

    groups = [
        {"params": list(unet.parameters()), "lr": cfg.unet_lr},
        {"params": list(text_encoder.parameters()), "lr": cfg.text_lr},
    ]
    rows = optimise(groups, cfg, cfg.unet_steps, step_loss, "toy train: UNet + text encoder", progress)
    return text_encoder.eval(), unet.eval(), {"losses": rows, "distinct_captions": len(cache)}


def train_classifier(cfg: ToyTrainConfig, vae, progress: bool = True):
    """Half of each batch is clean renders, half their VAE reconstructions, so it reads generated images too."""
    torch.manual_seed(cfg.seed + 3)
    rng = np.random.default_rng([cfg.seed, 3])
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    clf = ToyClassifier().train()
    opt = torch.optim.AdamW(clf.parameters(), lr=cfg.clf_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(cfg.warmup, cfg.clf_steps // 4 + 1), cfg.clf_steps))
    log = _Log(cfg.log_every)
    ce = torch.nn.CrossEntropyLoss()
    bar = tqdm(range(cfg.clf_steps), desc="toy train: classifier", disable=not progress)
    for step in bar:
        x, scenes = _images(rng, cfg.clf_batch)
        half = len(x) // 2
        with torch.no_grad():
            x[half:] = vae.decode(vae.encode(x[half:]).latent_dist.mode()).sample.clamp(-1, 1)
        x = x + 0.03 * torch.randn(x.shape, generator=gen)
        colour = torch.tensor([s.colour for s in scenes])
        shape = torch.tensor([s.shape for s in scenes])
        lc, ls = clf(x)
        loss = ce(lc, colour) + ce(ls, shape)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log.add(step, float(loss.detach()), bar)
    return clf.eval(), {"losses": log.rows}


def train_toy(cfg: ToyTrainConfig, output: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Train all three parts and write them to `output` atomically. Returns the training log."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise TRCEError(f"output folder {output} already exists; choose another --output or pass --overwrite")
    timings = {}
    t0 = time.perf_counter()
    vae, vae_log = train_vae(cfg, progress)
    timings["vae_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    text_encoder, unet, den_log = train_denoiser(cfg, vae, progress)
    timings["denoiser_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    clf, clf_log = train_classifier(cfg, vae, progress)
    timings["classifier_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    log = {
        "timings": timings,
        "vae": vae_log,
        "denoiser": den_log,
        "classifier": clf_log,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    pipe = sd_pipeline(vae, text_encoder, unet)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        pipe.to(getattr(torch, cfg.save_dtype)).save_pretrained(tmp / PIPELINE_DIR, safe_serialization=True)
        save_classifier(clf, tmp / CLASSIFIER_FILE)
        (tmp / CONFIG_FILE).write_text(cfg.to_yaml())
        write_json(tmp / LOG_FILE, log)
    return log
