"""How many sweep trials fit at once without starving each other.

A trial holds its own slot (`sweep.trial_cpus`/`trial_gpus`) for its whole life, and runs its phases one after the
other: the trajectory cache's actors, the stage-2 training workers, then the evaluation's generation and scoring
actors. Each phase takes what it needs all at once or waits holding nothing: the Ray Data actor pools reserve one
placement group per phase (`reservations.py`), Ray Train V2 gang-schedules its workers in a placement group of its
own. So a waiting trial holds only its slot: with `max_concurrent` slots plus the largest phase within the
cluster, whenever the granted phases end (they wait for nothing), what is free holds any waiting phase, so trials
always progress. The sweep lowers `max_concurrent` to that bound, and says so; a trial whose own peak (slot plus
largest phase) exceeds the cluster is refused before anything runs. The bound is on totals: on several nodes each
bundle must also fit one node's free room.
"""

from __future__ import annotations

import math

from .config import TRCEConfig
from .errors import ConfigError


def largest_phase(cfg: TRCEConfig, stages: tuple[str, ...], cluster_gpus: float) -> dict[str, float]:
    """CPUs and GPUs of a trial's largest phase (each phase reserves all of it at once, or waits holding nothing)."""
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
    return {kind: max(p[kind] for p in phases) for kind in ("CPU", "GPU")}


def trial_peak(
    cfg: TRCEConfig, stages: tuple[str, ...], cluster_gpus: float, slot: dict[str, float] | None = None
) -> dict[str, float]:
    """CPUs and GPUs one trial holds at its busiest phase; `slot` is what its own process holds throughout (default
    `sweep.trial_cpus`/`trial_gpus`; a campaign's erasure: its stage-1 resources)."""
    slot = slot or _slot(cfg)
    phase = largest_phase(cfg, stages, cluster_gpus)
    return {kind: slot[kind] + phase[kind] for kind in ("CPU", "GPU")}


def _slot(cfg: TRCEConfig) -> dict[str, float]:
    return {"CPU": cfg.sweep.trial_cpus, "GPU": cfg.sweep.trial_gpus}


def concurrent_trials(cfg: TRCEConfig, stages: tuple[str, ...], cluster: dict[str, float]) -> int:
    """`sweep.max_concurrent`, lowered so that every trial's slot plus the largest phase fit `cluster` (Ray's
    resource totals): then some waiting phase can always be granted once the running ones end."""
    slot, phase = _slot(cfg), largest_phase(cfg, stages, cluster.get("GPU", 0.0))
    fits = cfg.sweep.max_concurrent
    for kind in ("CPU", "GPU"):
        have, need = cluster.get(kind, 0.0), slot[kind] + phase[kind]
        if need > have + 1e-9:
            raise ConfigError(
                f"one sweep trial needs {need:g} {kind} at its peak (trial slot + its largest phase) but the "
                f"cluster has {have:g}: lower eval/cache/train actor resources or sweep.trial_{kind.lower()}s"
            )
        if slot[kind] > 0:
            fits = min(fits, math.floor((have - phase[kind]) / slot[kind] + 1e-9))
    return max(1, fits)
