"""Trajectory cache on Ray Data: a killed actor's shard is redone exactly once; reruns reuse; partial runs resume."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle

from trce_ray.stage2.cache import ShardWorker, build_cache, cache_dir_for, load_rows
from trce_ray.stage2.plan import MALICIOUS, UNCONDITIONAL, make_plan
from trce_ray.stage2.shards import read_shard

from .test_stage2_units import PAIRS, stage2_config


class DyingWorker(ShardWorker):
    """Logs every shard attempt, and kills its own actor process (no clean-up) the first time it starts shard 1."""

    def __call__(self, batch):
        log = Path(self.job.shard_dir).parent / "attempts.log"
        name = str(batch["shard"][0])
        with open(log, "a") as f:
            f.write(name + "\n")
        marker = Path(self.job.shard_dir).parent / "killed"
        if name.endswith("-00001.parquet") and name.startswith(MALICIOUS) and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(9)
        return super().__call__(batch)


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import the test package


@pytest.mark.slow
def test_cache_killed_actor_redone_once_then_reused_and_resumed(tmp_path, tiny_sd_dir, ray_cluster):
    cfg = stage2_config(tmp_path, tiny_sd_dir, **{"cache.num_actors": 2, "cache.num_cpus": 0.5})
    plan, specs = make_plan(cfg, PAIRS)
    info = build_cache(cfg, specs, progress=False, worker_cls=DyingWorker)
    attempts = (info.path / "attempts.log").read_text().split()
    shards = sorted(p.name for p in (info.path / "shards").glob("*.parquet"))
    assert (info.path / "killed").exists()
    # every shard exactly once, except the killed one: exactly twice (the killed attempt and its redo)
    counts = {s: attempts.count(s) for s in shards}
    assert counts.pop(f"{MALICIOUS}-00001.parquet") == 2
    assert set(counts.values()) == {1}
    manifest = json.loads((info.path / "manifest.json").read_text())
    # what sampling must have cost, derived from the draw plan alone: a malicious trajectory runs guided sampling
    # (2 denoiser rows: empty and c_m) down to its deepest drawn step, plus one c_s row at each distinct drawn
    # step; an unconditional trajectory runs 1 row per step down to its deepest drawn step
    mal_rows = unc_rows = expected = 0
    for item in range(cfg.cache.malicious_samples):
        drawn = set(plan.erase_step[plan.erase_item == item].tolist())
        expected += 2 * (max(drawn) + 1) + len(drawn)
        mal_rows += len(drawn)
    for item in set(plan.preserve_item.ravel().tolist()):
        drawn = set(plan.preserve_step[plan.preserve_item == item].tolist())
        expected += max(drawn) + 1
        unc_rows += len(drawn)
    assert manifest["denoiser_rows"] == expected == manifest["planned_denoiser_rows"]
    assert manifest["rows"] == {MALICIOUS: mal_rows, UNCONDITIONAL: unc_rows}
    assert sorted(i for s in manifest["shards"] if s["kind"] == MALICIOUS for i in s["items"]) == [0, 1, 2, 3]

    # every planned draw finds its record, with the t that produced it
    rows_m = load_rows(info.path, MALICIOUS, set(plan.erase_item.ravel().tolist()))
    got = rows_m.gather(plan.erase_item.ravel(), plan.erase_step.ravel())
    assert got["z"].shape[0] == plan.erase_item.size and got["t"].min() > 0
    rows_u = load_rows(info.path, UNCONDITIONAL, set(plan.preserve_item.ravel().tolist()))
    assert rows_u.gather(plan.preserve_item.ravel(), plan.preserve_step.ravel())["eps_uncond"].shape[0] > 0

    # a rerun reuses the complete cache without sampling
    again = build_cache(cfg, specs, progress=False)
    assert again.reused and again.shards_built == 0 and again.path == info.path

    # an interrupted run (one shard and the manifest missing) redoes only that shard, with identical content
    victim = info.path / "shards" / f"{UNCONDITIONAL}-00000.parquet"
    before = read_shard(victim)
    victim.unlink()
    (info.path / "manifest.json").unlink()
    resumed = build_cache(cfg, specs, progress=False)
    assert not resumed.reused and resumed.shards_built == 1
    after = read_shard(victim)
    assert all(np.array_equal(before[k], after[k]) for k in before)

    # anything that changes the content changes the address
    changes = (
        {"cache.guidance": 3.0},
        {"cache.store_dtype": "float16"},
        {"cache.steps": 9},
        {"model.dtype": "float16"},
    )
    for change in changes:
        assert cache_dir_for(stage2_config(tmp_path, tiny_sd_dir, **change), specs) != info.path
