"""Sampling with the original model that records, at planned steps, what the stage-2 loss needs.

The scheduler is the family's (`adapter.sampling_scheduler`): DDIM for SD-1.x/2.x as in the paper, the pipeline's
own for SDXL (DDIM or Euler), flow matching with the pipeline's sigmas for SD3 and FLUX. The "eps" columns hold the
model's native prediction (epsilon, v or flow velocity): Eq. 6-9 are linear in it, so the loss needs no conversion.
For a malicious trajectory the guided sampling already evaluates f(z_t, empty) and f(z_t, c_m); the only extra
evaluation is f(z_t, c_s), and only at recorded steps (at most 1.5x the cost of plain classifier-free sampling).
Each record pairs the denoiser's input z_t (after `scale_model_input`, a no-op except for Euler) with the exact
timestep it saw, as a float (flow-matching timesteps are sigma * 1000, not integers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..models.base import Conditioning, DiffusionAdapter
from .plan import MALICIOUS, TrajectorySpec

TENSOR_COLUMNS = {MALICIOUS: ("z", "eps_uncond", "eps_cond", "eps_safe"), "unconditional": ("z", "eps_uncond")}


def ddim_scheduler(pipe):
    """DDIM on the pipeline's own noise schedule (what SD-1.x/2.x sample stage 2's trajectories with)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(pipe.scheduler.config)


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """z_T drawn on the CPU from the trajectory's own seed, so it is the same on every device and in every batch."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


@dataclass
class Records:
    """Column-wise records of one kind: item, step, t, and tensor columns as numpy arrays."""

    kind: str
    columns: dict[str, list] = field(default_factory=dict)

    def add(self, **values) -> None:
        for k, v in values.items():
            self.columns.setdefault(k, []).append(v)

    def arrays(self, store_dtype: str) -> dict[str, np.ndarray]:
        out = {}
        for k, parts in self.columns.items():
            if k in TENSOR_COLUMNS[self.kind]:
                out[k] = torch.cat(parts).to(getattr(torch, store_dtype)).numpy()
            else:
                out[k] = np.concatenate(parts)
        return out


@torch.no_grad()
def sample_trajectories(
    adapter: DiffusionAdapter,
    specs: list[TrajectorySpec],
    steps: int,
    guidance: float,
    latent_shape: tuple[int, int, int],
    batch_size: int,
    counter: list[int] | None = None,
) -> Records:
    """Sample `specs` (all of one kind) in batches and return their records.

    Args:
        counter: if given, counter[0] is increased by the number of denoiser rows evaluated.
    """
    kind = specs[0].kind
    if any(s.kind != kind for s in specs):
        raise ValueError("sample_trajectories takes trajectories of one kind")
    records = Records(kind)
    for start in range(0, len(specs), batch_size):
        _sample_batch(adapter, specs[start : start + batch_size], steps, guidance, latent_shape, records, counter)
    return records


def _sample_batch(adapter, specs, steps, guidance, latent_shape, records: Records, counter) -> None:
    scheduler = adapter.sampling_scheduler(steps, latent_shape)  # fresh per batch: Euler-type ones keep a step index
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)  # flow matching has none
    device, dtype = adapter.device, adapter.dtype
    malicious = specs[0].kind == MALICIOUS
    n = len(specs)
    empty = adapter.condition([""]).to(device, dtype)
    if malicious:
        both = adapter.condition([s.prompt for s in specs] + [s.safe_prompt for s in specs]).to(device, dtype)
        cond_m, cond_s = both[:n], both[n:]
    z = torch.stack([initial_noise(s.seed, latent_shape) for s in specs]) * getattr(scheduler, "init_noise_sigma", 1.0)
    z = z.to(device, dtype)
    depth = torch.tensor([s.depth for s in specs])
    recorded = [set(s.record) for s in specs]
    for k in range(int(depth.max())):
        t = scheduler.timesteps[k]
        act = torch.nonzero(depth > k).flatten()
        rec = torch.tensor([i for i in act.tolist() if k in recorded[i]], dtype=torch.long)
        z_in = scale(z[act], t)
        pos = torch.tensor([act.tolist().index(i) for i in rec.tolist()], dtype=torch.long)
        z_rec = z_in[pos]
        na, nr = len(act), len(rec)
        if malicious:
            parts_z, parts_c = [z_in, z_in, z_rec], [empty[[0] * na], cond_m[act], cond_s[rec]]
        else:
            parts_z, parts_c = [z_in], [empty[[0] * na]]
        batch = torch.cat(parts_z)
        t_in = torch.full((len(batch),), float(t), dtype=torch.float32, device=device)  # what training passes too
        pred = adapter.predict_noise(batch, t_in, Conditioning.cat(parts_c))
        if counter is not None:
            counter[0] += len(batch)
        eps_u = pred[:na]
        eps = eps_u + guidance * (pred[na : 2 * na] - eps_u) if malicious else eps_u
        if nr:
            cols = {"z": z_rec.float().cpu(), "eps_uncond": eps_u[pos].float().cpu()}
            if malicious:
                cols["eps_cond"] = pred[na : 2 * na][pos].float().cpu()
                cols["eps_safe"] = pred[2 * na :].float().cpu()
            records.add(
                item=np.array([specs[i].index for i in rec.tolist()], dtype=np.int32),
                step=np.full(nr, k, dtype=np.int16),
                t=np.full(nr, float(t), dtype=np.float64),
                **cols,
            )
        z[act] = scheduler.step(eps, t, z[act]).prev_sample.to(dtype)
