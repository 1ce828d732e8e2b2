"""How many sweep trials fit at once without starving each other.

A trial holds its own slot (`sweep.trial_cpus`/`trial_gpus`) for its whole life, and runs its phases one after the
other: the trajectory cache's actors, the stage-2 training workers, then the evaluation's generation and scoring
actors. Its peak need is its slot plus the largest phase. When `max_concurrent` trials each hold a slot and start a
phase whose actors only partly fit, each can hold part of what it needs and wait forever for the rest. The sweep
therefore runs at most as many trials at once as the cluster holds at their peak, and says so when it lowers
`max_concurrent`; a trial whose peak exceeds the cluster is refused before anything runs.
"""

from __future__ import annotations

import math

from .config import TRCEConfig
from .errors import ConfigError


def trial_peak(
    cfg: TRCEConfig, stages: tuple[str, ...], cluster_gpus: float, slot: dict[str, float] | None = None
) -> dict[str, float]:
    """CPUs and GPUs one trial holds at its busiest phase; `slot` is what its own process holds throughout (default
    `sweep.trial_cpus`/`trial_gpus`; a campaign's erasure: its stage-1 resources)."""
    slot = slot or {"CPU": cfg.sweep.trial_cpus, "GPU": cfg.sweep.trial_gpus}
    e = cfg.eval
    gen_gpus = e.gpus_per_actor if e.gpus_per_actor is not None else (1.0 if cluster_gpus > 0 else 0.0)
    phases = [
        {
            "CPU": e.actors * e.cpus_per_actor + e.scorer_actors * e.scorer_cpus,
            "GPU": e.actors * gen_gpus + e.scorer_actors * e.scorer_gpus,
        },
    ]
    if "visual" in stages:
        c, t = cfg.cache, cfg.train
        phases.append({"CPU": c.num_actors * c.num_cpus, "GPU": c.num_actors * c.num_gpus})
        train_gpu = 1.0 if (t.use_gpu or (t.use_gpu is None and cluster_gpus > 0)) else 0.0
        phases.append({"CPU": t.num_workers * t.cpus_per_worker, "GPU": t.num_workers * train_gpu})
    return {
        "CPU": slot["CPU"] + max(p["CPU"] for p in phases),
        "GPU": slot["GPU"] + max(p["GPU"] for p in phases),
    }


def concurrent_trials(cfg: TRCEConfig, stages: tuple[str, ...], cluster: dict[str, float]) -> int:
    """`sweep.max_concurrent`, lowered to what `cluster` (Ray's resource totals) holds at every trial's peak."""
    peak = trial_peak(cfg, stages, cluster.get("GPU", 0.0))
    fits = cfg.sweep.max_concurrent
    for kind, need in peak.items():
        have = cluster.get(kind, 0.0)
        if need > 0:
            if need > have + 1e-9:
                raise ConfigError(
                    f"one sweep trial needs {need:g} {kind} at its peak (trial slot + its largest phase) but the "
                    f"cluster has {have:g}: lower eval/cache/train actor resources or sweep.trial_{kind.lower()}s"
                )
            fits = min(fits, math.floor(have / need + 1e-9))
    return max(1, fits)
