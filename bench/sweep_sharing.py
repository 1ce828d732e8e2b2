"""Work shared across sweep trials: a beta x lambda sweep with stage 2 on the toy world against independent runs.

Runs one `trce-ray sweep --stages text,visual` over train.beta x train.lam (3 x 3 by default) and reads back what
each trial spent; then (unless --no-independent) the same points as independent `trce-ray erase --stages
text,visual` runs, each with its own cache root (as Tune trials had before the sweep made the cache root absolute),
and reads back what each of those spent. The sweep solves stage 1 once per distinct stage-1 setting and builds the
cache once.

    OMP_NUM_THREADS=1 python bench/sweep_sharing.py [--points 3] [--output /tmp/bench-sweep]

How calls are counted: the cache's shard workers count every denoiser row they evaluate (`sample_trajectories`'s
counter, summed into the cache manifest's `denoiser_rows`); a run that found the cache complete (`cache_reused` in
its `stage2_summary.json`) spent none. The manifest's `planned_denoiser_rows` (from the plan, `sampling_cost`) is
printed as a cross-check. Stage 1 is a closed-form solve on text-encoder embeddings: it calls no denoiser, so it is
counted in solves (the `shared/stage1-*` folders of the sweep; one per independent run). Evaluation and training are
kept minimal (2 prompts a set, 4 sampling steps, 2 training steps): they do not change these counts.

Prints the denoiser calls spent on caches, the stage-1 solves and the wall times, shared vs independent.
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

BETAS = [5, 10, 15, 20]
LAMS = [10, 100, 1000, 300]


def _erase_flags(cache: Path) -> list[str]:
    """What a sweep trial and an independent run share: the concept, both stages, the cache and training settings."""
    flags = ["--model", "toy", "--concept", "toy-red", "--preserve-prompts", str(preserve_file("red"))]
    flags += ["--stages", "text,visual"]
    sets = [
        "stage1.convention=normalised",
        f"cache.root={cache}",
        "cache.steps=10",
        "cache.malicious_samples=4",
        "cache.shard_size=2",
        "train.max_steps=2",
        "train.num_workers=1",  # a Ray Train worker (local mode, 0, cannot run inside a Tune trial)
        "tracking.enabled=false",
    ]
    return flags + [x for item in sets for x in ("--set", item)]


def _cache_cost(summaries: list[dict]) -> dict:
    """Denoiser rows spent by runs (those that built their cache), and the plan's count for one cache."""
    built = [s for s in summaries if not s["cache_reused"]]
    manifests = {s["cache"]: json.loads((Path(s["cache"]) / "manifest.json").read_text()) for s in summaries}
    return {
        "cache_builds": len(built),
        "cache_denoiser_rows": sum(s["cache_denoiser_rows"] for s in built),
        "planned_rows_per_cache": sorted({m["planned_denoiser_rows"] for m in manifests.values()}),
    }


def run_independent(points: int, out: Path) -> dict:
    """Each point as its own `trce-ray erase --stages text,visual`, each with its own cache root."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    summaries = []
    for i, (beta, lam) in enumerate((b, lam) for b in BETAS[:points] for lam in LAMS[:points]):
        folder = out / f"run{i:02d}"
        args = ["erase", *_erase_flags(folder / "cache"), "--set", f"train.beta={beta}", "--set", f"train.lam={lam}"]
        if main([*args, "--output", str(folder / "erase")]) != 0:
            raise SystemExit(f"independent run {i} failed")
        summaries.append(json.loads((folder / "erase" / "stage2_summary.json").read_text()))
    return {"runs": len(summaries), "wall_s": time.perf_counter() - t0, **_cache_cost(summaries)}


def run(points: int, out: Path) -> dict:
    cache = out.parent / (out.name + "-cache")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)  # the sweep must build its cache, not find one from an earlier run
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [
        "sweep",
        *_erase_flags(cache),
        "--grid",
        "train.beta=" + ",".join(map(str, BETAS[:points])),
        "--grid",
        "train.lam=" + ",".join(map(str, LAMS[:points])),
        "--suite",
        "toy",
        "--set",
        "eval.steps=4",
        "--set",
        "eval.limit=2",
        "--set",
        "eval.cpus_per_actor=0.5",
        "--set",
        "eval.scorer_cpus=0.5",
        "--output",
        str(out),
    ]
    t0 = time.perf_counter()
    rc = main(args)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"the sweep failed (exit {rc}); see {out}/sweep.csv")
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("trials/*/erase/stage2_summary.json"))]
    return {
        "trials": len(summaries),
        "wall_s": wall,
        **_cache_cost(summaries),
        "stage1_solves": len(list((out / "shared").glob("stage1-*"))),
    }


def main_cli() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=3, help="values per axis (points x points trials)")
    p.add_argument("--output", type=Path, default=None, help="sweep folder (default: a temporary one)")
    p.add_argument("--no-independent", action="store_true", help="skip the independent runs (count them as n x one)")
    a = p.parse_args()
    out = a.output or Path(tempfile.mkdtemp(prefix="bench-sweep-")) / "sweep"
    shared = run(a.points, out)
    print(json.dumps({"sweep": shared}, indent=2), flush=True)
    n = shared["trials"]
    if a.no_independent:
        alone = {"runs": n, "wall_s": float("nan"), "cache_builds": n}
        alone["cache_denoiser_rows"] = n * shared["cache_denoiser_rows"]
    else:
        alone = run_independent(a.points, out.parent / (out.name + "-independent"))
        print(json.dumps({"independent": alone}, indent=2))
    ratio = shared["cache_denoiser_rows"] / alone["cache_denoiser_rows"]
    print(f"| quantity | shared (this sweep) | {alone['runs']} independent runs | ratio |")
    print("|---|---|---|---|")
    print(f"| cache builds | {shared['cache_builds']} | {alone['cache_builds']} | |")
    calls = f"{shared['cache_denoiser_rows']} | {alone['cache_denoiser_rows']}"
    print(f"| cache denoiser calls | {calls} | {ratio:.3f}x |")
    print(f"| stage-1 solves (0 denoiser calls each) | {shared['stage1_solves']} | {alone['runs']} | |")
    print(f"| wall time | {shared['wall_s']:.0f} s | {alone['wall_s']:.0f} s | |")
    print(f"planned denoiser rows per cache: {shared['planned_rows_per_cache']}")


if __name__ == "__main__":
    main_cli()
