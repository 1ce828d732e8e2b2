"""Plan every training draw before sampling anything, so the cache holds exactly what training consumes.

A draw is (trajectory, step index). Erase draws take each malicious trajectory once per epoch (shuffled), at a
step uniform over the first `cache.erase_steps` steps (paper: first 25 of 50 DDIM steps). Preservation draws take
`train.preserve_per_sample` unconditional (trajectory, step) pairs per erase draw, the step uniform over all steps
(Eq. 9 "uniformly sampled t from [0, T]").

In "planned" mode each unconditional trajectory serves `cache.draws_per_trajectory` draws and every trajectory is
sampled only down to its deepest draw; in "paper" mode the cache holds the paper's counts (all steps of 100 + 2,000
trajectories) and draws pick from them uniformly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import TRCEConfig

MALICIOUS = "malicious"
UNCONDITIONAL = "unconditional"


@dataclass(frozen=True)
class TrajectorySpec:
    """One trajectory to sample with the original model, and which of its steps to record."""

    kind: str  # MALICIOUS or UNCONDITIONAL
    index: int  # position among trajectories of its kind
    prompt: str  # "" for unconditional trajectories
    safe_prompt: str  # the paired stage-1 target prompt (c_s); "" for unconditional trajectories
    seed: int  # seed of the initial noise z_T
    record: tuple[int, ...]  # step indices whose (z_t, t, predictions) are stored, ascending
    depth: int  # steps to sample (>= last recorded step + 1)

    def to_json(self) -> dict:
        return {**self.__dict__, "record": list(self.record)}


@dataclass(frozen=True)
class DrawPlan:
    """Per optimizer step, the draws of all workers and micro-steps: arrays of shape [steps, draws per step]."""

    erase_item: np.ndarray  # malicious trajectory index of each erase draw
    erase_step: np.ndarray  # step index of each erase draw (< erase_steps)
    preserve_item: np.ndarray  # unconditional trajectory index of each preservation draw
    preserve_step: np.ndarray  # step index of each preservation draw (< steps)

    @property
    def steps(self) -> int:
        return self.erase_item.shape[0]

    def share(self, step: int, micro: int, accum: int, rank: int, world: int) -> tuple[np.ndarray, ...]:
        """The draws of one worker for one micro-step: rows `rank::world` of the micro-step's slice."""
        out = []
        for arr in (self.erase_item, self.erase_step, self.preserve_item, self.preserve_step):
            per = arr.shape[1] // accum
            out.append(arr[step, micro * per : (micro + 1) * per][rank::world])
        return tuple(out)


def _seed(seed: int, kind: str, index: int) -> int:
    code = 1 if kind == MALICIOUS else 2
    return int(np.random.SeedSequence([seed, code, index]).generate_state(1)[0] & 0x7FFFFFFF)


def make_plan(cfg: TRCEConfig, pairs: list[tuple[str, str]]) -> tuple[DrawPlan, list[TrajectorySpec]]:
    """The training draws and the trajectories the cache must hold for them, both deterministic in `cfg.seed`.

    Args:
        cfg: the resolved config (cache and train sections, seed).
        pairs: (erase prompt, safe target prompt) pairs of stage 1; malicious trajectory i uses pair
            `perm[i % len(pairs)]` for a seeded permutation, so 100 samples spread over 300 pairs.
    """
    c, t = cfg.cache, cfg.train
    if not pairs:
        raise ValueError("stage 2 needs at least one (erase, target) prompt pair")
    rng = np.random.default_rng([cfg.seed, 2])
    n_mal, per_step = c.malicious_samples, t.batch_size * t.grad_accum
    n_steps = math.ceil(t.epochs * n_mal / per_step)
    if t.max_steps is not None:
        n_steps = min(n_steps, t.max_steps)
    n_erase = n_steps * per_step
    epochs_needed = math.ceil(n_erase / n_mal)
    erase_item = np.concatenate([rng.permutation(n_mal) for _ in range(epochs_needed)])[:n_erase]
    erase_step = rng.integers(0, c.erase_steps, size=n_erase)

    n_pres = n_erase * t.preserve_per_sample
    if c.mode == "planned":
        n_unc = math.ceil(n_pres / c.draws_per_trajectory)
        preserve_item = rng.permutation(np.repeat(np.arange(n_unc), c.draws_per_trajectory))[:n_pres]
    else:
        n_unc = c.unconditional_samples
        preserve_item = rng.integers(0, n_unc, size=n_pres)
    preserve_step = rng.integers(0, c.steps, size=n_pres)

    pair_of = rng.permutation(len(pairs))
    specs: list[TrajectorySpec] = []
    groups = (
        (MALICIOUS, n_mal, erase_item, erase_step, c.erase_steps),
        (UNCONDITIONAL, n_unc, preserve_item, preserve_step, c.steps),
    )
    for kind, count, items, steps, paper_record in groups:
        for i in range(count):
            drawn = sorted(set(steps[items == i].tolist()))
            if c.mode == "paper":
                record, depth = tuple(range(paper_record)), c.steps
            elif drawn:
                record, depth = tuple(drawn), drawn[-1] + 1
            else:
                continue  # a short run (max_steps) never draws it
            prompt, safe = pairs[pair_of[i % len(pairs)]] if kind == MALICIOUS else ("", "")
            specs.append(TrajectorySpec(kind, i, prompt, safe, _seed(cfg.seed, kind, i), record, depth))

    shape = (n_steps, per_step)
    plan = DrawPlan(
        erase_item.reshape(shape),
        erase_step.reshape(shape),
        preserve_item.reshape(n_steps, -1),
        preserve_step.reshape(n_steps, -1),
    )
    return plan, specs


def sampling_cost(specs: list[TrajectorySpec]) -> int:
    """Denoiser evaluations (batch rows) to build a cache: 2 per malicious step (classifier-free guidance), +1 for
    eps(z_t, c_s) at recorded steps, and 1 per unconditional step (its guided prediction is eps(z_t, empty) itself)."""
    total = 0
    for s in specs:
        total += 2 * s.depth + len(s.record) if s.kind == MALICIOUS else s.depth
    return total
