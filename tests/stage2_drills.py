"""Test-only instruments for stage 2, injected with `run_stage2(train_loop=...)` (nothing of this ships).

Each loop runs a subclass of the production `TrainWorker`. Files go beside the run's trajectory cache
(`cfg.cache.root`'s parent: the test's own temporary folder), where every worker process can reach them.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import ray.cloudpickle

from trce_ray.stage2.worker import TrainWorker

CRASH_STEP = 3


def drill_dir(job) -> Path:
    return Path(job.cfg.cache.root).parent


class CrashOnce(TrainWorker):
    """Rank 0 exits hard (no clean-up) after step CRASH_STEP, once: a marker file stops a second crash."""

    def after_step(self, step: int) -> None:
        marker = drill_dir(self.job) / "crashed"
        if step == CRASH_STEP and self.rank == 0 and not marker.exists():
            marker.write_text(str(step))
            os._exit(1)


class CountModels(TrainWorker):
    """Counts the diffusers models each worker builds while loading, by class name (`models_built-rank<N>.json`):
    the proof that training holds one denoiser and no reference model."""

    def _load(self):
        from diffusers import ModelMixin

        built: Counter = Counter()
        original = ModelMixin.__init__

        def counting_init(model, *args, **kwargs):
            built[type(model).__name__] += 1
            original(model, *args, **kwargs)

        ModelMixin.__init__ = counting_init
        try:
            return super()._load()
        finally:
            ModelMixin.__init__ = original
            (drill_dir(self.job) / f"models_built-rank{self.rank}.json").write_text(json.dumps(built))


def crash_once_loop(config: dict) -> None:
    CrashOnce(config["job"]).run()


def count_models_loop(config: dict) -> None:
    CountModels(config["job"]).run()


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import the test package
