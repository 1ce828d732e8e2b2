"""Why the toy world renders at 32x32: training-step cost at 32 vs 64 pixels, same architecture, same process.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/toy_resolution.py

Prints seconds per step (median of 5 after one warm-up) and the 64/32 ratio for the VAE and the UNet + text encoder.
"""

from __future__ import annotations

import statistics
import time

import torch

from trce_ray.toy.model import ArchConfig, build_text_encoder, build_unet, build_vae


def seconds_per_step(step, n: int = 5) -> float:
    step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def vae_step(size: int, batch: int = 32):
    arch = ArchConfig()
    vae = build_vae(arch)
    vae.register_to_config(sample_size=size)
    opt = torch.optim.AdamW(vae.parameters())
    x = torch.randn(batch, 3, size, size)

    def step():
        post = vae.encode(x).latent_dist
        loss = (vae.decode(post.sample()).sample - x).abs().mean() + 1e-5 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def denoiser_step(size: int, batch: int = 64):
    arch = ArchConfig()
    unet, text = build_unet(arch), build_text_encoder(arch)
    latent = size // 2 ** (len(arch.vae_channels) - 1)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params)
    ids = torch.randint(0, 49408, (batch, 77))
    z, t = torch.randn(batch, arch.latent_channels, latent, latent), torch.randint(0, 1000, (batch,))

    def step():
        loss = unet(z, t, encoder_hidden_states=text(ids)[0]).sample.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"{'part':<24}{'32px s/step':>14}{'64px s/step':>14}{'64/32':>8}")
    for name, make in (("VAE (batch 32)", vae_step), ("UNet + text (batch 64)", denoiser_step)):
        s32, s64 = seconds_per_step(make(32)), seconds_per_step(make(64))
        print(f"{name:<24}{s32:>14.3f}{s64:>14.3f}{s64 / s32:>8.2f}")


if __name__ == "__main__":
    main()
