"""Work shared across sweep trials: a beta x lambda sweep with stage 2 on the toy world against independent runs.

Runs one `trce-ray sweep --stages text,visual` over train.beta x train.lam (3 x 3 by default) and reads back what
each trial spent. Nine independent `trce-ray erase --stages text,visual` runs would each solve stage 1 and build
their own trajectory cache (each in its own working directory, as Tune trials did before the cache root was made
absolute); the sweep solves stage 1 once per distinct stage-1 setting and builds the cache once.

    OMP_NUM_THREADS=1 python bench/sweep_sharing.py [--points 3] [--output /tmp/bench-sweep]

Prints the denoiser calls spent on caches, the stage-1 solves and the wall time, shared vs independent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from trce_ray.cli import main
from trce_ray.toy.packs import preserve_file


def run(points: int, out: Path) -> dict:
    betas = [5, 10, 15, 20][:points]
    lams = [10, 100, 1000, 300][:points]
    cache = out.parent / (out.name + "-cache")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)  # the sweep must build its cache, not find one from an earlier run
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [
        "sweep",
        "--model",
        "toy",
        "--concept",
        "toy-red",
        "--preserve-prompts",
        str(preserve_file("red")),
        "--stages",
        "text,visual",
        "--grid",
        "train.beta=" + ",".join(map(str, betas)),
        "--grid",
        "train.lam=" + ",".join(map(str, lams)),
        "--suite",
        "toy",
        "--set",
        "stage1.convention=normalised",
        "--set",
        f"cache.root={cache}",
        "--set",
        "cache.steps=10",
        "--set",
        "cache.malicious_samples=4",
        "--set",
        "cache.shard_size=2",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.num_workers=1",  # a Ray Train worker (local mode, 0, cannot run inside a Tune trial)
        "--set",
        "eval.steps=4",
        "--set",
        "eval.limit=2",
        "--set",
        "eval.cpus_per_actor=0.5",
        "--set",
        "eval.scorer_cpus=0.5",
        "--set",
        "tracking.enabled=false",
        "--output",
        str(out),
    ]
    t0 = time.perf_counter()
    rc = main(args)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"the sweep failed (exit {rc}); see {out}/sweep.csv")
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("trials/*/erase/stage2_summary.json"))]
    built = [s for s in summaries if not s["cache_reused"]]
    per_cache = summaries[0]["cache_denoiser_rows"]
    stage1_solves = len(list((out / "shared").glob("stage1-*")))
    n = len(summaries)
    return {
        "trials": n,
        "wall_s": wall,
        "cache_builds": len(built),
        "cache_denoiser_rows_shared": sum(s["cache_denoiser_rows"] for s in built),
        "cache_denoiser_rows_independent": n * per_cache,
        "stage1_solves_shared": stage1_solves,
        "stage1_solves_independent": n,
    }


def main_cli() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=3, help="values per axis (points x points trials)")
    p.add_argument("--output", type=Path, default=None, help="sweep folder (default: a temporary one)")
    a = p.parse_args()
    out = a.output or Path(tempfile.mkdtemp(prefix="bench-sweep-")) / "sweep"
    r = run(a.points, out)
    ratio = r["cache_denoiser_rows_shared"] / r["cache_denoiser_rows_independent"]
    print(json.dumps(r, indent=2))
    print(f"| quantity | shared (this sweep) | {r['trials']} independent runs | ratio |")
    print("|---|---|---|---|")
    print(
        f"| cache denoiser calls | {r['cache_denoiser_rows_shared']} | {r['cache_denoiser_rows_independent']} "
        f"| {ratio:.3f}x |"
    )
    print(
        f"| stage-1 solves | {r['stage1_solves_shared']} | {r['stage1_solves_independent']} "
        f"| {r['stage1_solves_shared'] / r['stage1_solves_independent']:.3f}x |"
    )
    print(f"sweep wall time: {r['wall_s']:.0f} s for {r['trials']} trials")


if __name__ == "__main__":
    main_cli()
