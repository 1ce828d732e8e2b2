"""The stage-2 objective (paper Eq. 6-9), with every target taken from the trajectory cache.

Squared distances are per-element means (||a - b||^2 / numel), as in the authors' code (`F.mse_loss(...).mean`
over C, H, W); that is the scale on which margin = 0.01 and lambda = 100 were tuned.

Paper Table 5's ablations are three switches (`train.preserve_loss`, `train.erase_contrast`,
`train.guidance_enhance`), all on by default; with all on the loss is computed exactly as before they existed.
Off, they drop one component each:

- `preserve_loss: false`: total = L_erase (L_preserve is still computed and reported, with no weight);
- `erase_contrast: false`: L_erase = d(pred, f_safe), a plain pull toward the safe prediction without the
  unsafe term or the margin ("safe guidance alignment" in the paper);
- `guidance_enhance: false`: f_unsafe = eps(z, c_m), f_safe = eps(z, c_s), the cached conditional predictions
  themselves (beta = 1 in Eq. 6/7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.base import Conditioning, DiffusionAdapter


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, beta: float) -> torch.Tensor:
    """Guidance-enhanced prediction (Eq. 6 with c_m gives f_unsafe, Eq. 7 with c_s gives f_safe)."""
    return eps_uncond + beta * (eps_cond - eps_uncond)


def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared distance, shape [B]."""
    return (a - b).pow(2).flatten(1).mean(1)


def triplet_hinge(pred: torch.Tensor, f_safe: torch.Tensor, f_unsafe: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 8 per sample: max(d(pred, f_safe) - d(pred, f_unsafe) + margin, 0)."""
    return torch.clamp(sq_dist(pred, f_safe) - sq_dist(pred, f_unsafe) + margin, min=0)


@dataclass
class Stage2Loss:
    total: torch.Tensor
    erase: torch.Tensor  # L_erase, averaged over c in {c_m, empty} and the erase draws
    preserve: torch.Tensor  # L_preserve, averaged over the preservation draws


def stage2_loss(
    pred_cond: torch.Tensor,
    pred_uncond: torch.Tensor,
    pred_preserve: torch.Tensor,
    cached_m: dict[str, torch.Tensor],
    cached_u: dict[str, torch.Tensor],
    beta: float,
    margin: float,
    lam: float,
    *,
    preserve_loss: bool = True,
    erase_contrast: bool = True,
    guidance_enhance: bool = True,
) -> Stage2Loss:
    """L_erase + lambda * L_preserve, less the components switched off (module docstring, paper Table 5).

    Args:
        pred_cond: trained model at (z_t^m, c_m, t), [B, C, H, W].
        pred_uncond: trained model at (z_t^m, empty, t), [B, C, H, W].
        pred_preserve: trained model at (z_t^u, empty, t), [P, C, H, W].
        cached_m: original model's eps_uncond, eps_cond, eps_safe at z_t^m (from the cache).
        cached_u: original model's eps_uncond at z_t^u (from the cache).
    """
    if guidance_enhance:
        f_unsafe = guided(cached_m["eps_uncond"], cached_m["eps_cond"], beta)
        f_safe = guided(cached_m["eps_uncond"], cached_m["eps_safe"], beta)
    else:
        f_unsafe, f_safe = cached_m["eps_cond"], cached_m["eps_safe"]
    if erase_contrast:
        per_sample = triplet_hinge(pred_cond, f_safe, f_unsafe, margin) + triplet_hinge(
            pred_uncond, f_safe, f_unsafe, margin
        )
    else:
        per_sample = sq_dist(pred_cond, f_safe) + sq_dist(pred_uncond, f_safe)
    erase = 0.5 * per_sample.mean()
    preserve = sq_dist(pred_preserve, cached_u["eps_uncond"]).mean()
    return Stage2Loss(erase + lam * preserve if preserve_loss else erase, erase, preserve)


def cached_draws_loss(
    adapter: DiffusionAdapter,
    cond_m: Conditioning,
    empty: Conditioning,
    m: dict[str, torch.Tensor],
    u: dict[str, torch.Tensor],
    beta: float,
    margin: float,
    lam: float,
    **switches: bool,
) -> Stage2Loss:
    """The loss of one batch of cached draws: ONE forward of the trained denoiser over
    [z_t^m with c_m | z_t^m with empty | z_t^u with empty], i.e. 2 + R rows per erase draw and no reference model.

    Args:
        adapter: the trained model (its `predict_noise` may run through a DDP/DeepSpeed wrapper).
        cond_m: c_m of each erase draw; empty: the one-row empty-prompt conditioning.
        m, u: cached records of the erase and preservation draws (z, t, eps_* as in `CachedRows.gather`).
        switches: `stage2_loss`'s ablation switches (preserve_loss, erase_contrast, guidance_enhance).
    """
    device, dtype = adapter.device, adapter.dtype
    nm, nu = len(m["z"]), len(u["z"])
    cond = Conditioning.cat([cond_m, empty[[0] * (nm + nu)]]).to(device, dtype)
    z = torch.cat([m["z"], m["z"], u["z"]]).to(device, dtype)
    t = torch.cat([m["t"], m["t"], u["t"]]).to(device)
    pred = adapter.predict_noise(z, t, cond).float()
    cached_m = {k: m[k].to(device) for k in ("eps_uncond", "eps_cond", "eps_safe")}
    return stage2_loss(
        pred[:nm],
        pred[nm : 2 * nm],
        pred[2 * nm :],
        cached_m,
        {"eps_uncond": u["eps_uncond"].to(device)},
        beta,
        margin,
        lam,
        **switches,
    )
