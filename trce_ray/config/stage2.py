"""Stage 2, Denoising Trajectory Steering (paper Sec. 4.2): the trajectory cache and the fine-tuning run.

Owned by the stage-2 work (issue 4); fields here are the paper's defaults.
"""

from __future__ import annotations

from .base import Section


class CacheConfig(Section):
    steps: int = 50  # DDIM steps of the original model's sampling (paper: 50, first half kept)
    guidance: float = 7.5  # classifier-free guidance of the cached trajectories
    malicious_samples: int = 100  # trajectories on malicious prompts (paper: 100 sexual / 300 multi-concept)
    unconditional_samples: int = 2000  # trajectories on the empty prompt (paper: 2000)


class TrainConfig(Section):
    beta: float = 15.0  # guidance enhancement scale of f_safe / f_unsafe (Eq. 6/7)
    margin: float = 0.01  # triplet margin (Eq. 8)
    lam: float = 100.0  # weight of L_preserve (Eq. 9)
    lr: float = 1e-6  # Adam learning rate
    epochs: int = 3
