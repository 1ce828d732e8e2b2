"""Images/s of `trce-ray eval`'s generation stage: Ray Data with 1 actor vs the same loop in-process.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 RAY_AUTH_MODE=disabled python bench/eval_generation.py            # tiny model
    python bench/eval_generation.py --model /models/sd-v1-4 --device cuda --images 256 --steps 30 --batch-size 8

Both sides run `ImageGenerator` (same pipeline, seeds, batch size and file writes); the in-process side runs in a
fresh process without Ray. Steady state excludes the first batch on each side (pipeline warm-up) and is timed where
batches finish (inside the actor for Ray; `delivered_img_s` is the rate at which they reach the driver); the Ray
side's start-up (actor creation, imports, pipeline load, first batch) is reported separately. The ratio is Ray
steady-state images/s over in-process steady-state images/s (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def rows_for(n: int, batch: int) -> list[dict]:
    from trce_ray.evaluation.generation import image_relpath

    return [
        {
            "set": "bench",
            "row": i,
            "k": 0,
            "prompt": f"a photo of a cat number {i}",
            "seed": i,
            "guidance": 7.5,
            "relpath": image_relpath("bench", i, 0, f"a photo of a cat number {i}", i, 7.5),
            "detectors": "",
        }
        for i in range(n)
    ]


def timed_generator_cls():
    from trce_ray.evaluation.generation import ImageGenerator

    class TimedGenerator(ImageGenerator):
        """Adds when each batch finished and how long the call took (wall clock, comparable across processes)."""

        def __call__(self, batch):
            import numpy as np

            t = time.time()
            out = super().__call__(batch)
            n = len(out["relpath"])
            out["t_done"] = np.full(n, time.time())
            out["udf_s"] = np.full(n, time.time() - t)
            return out

    return TimedGenerator


def steady_rate(stamps: list[tuple[int, float]]) -> float:
    """Images/s after the first batch: (images in batches 2..n) / (time from batch 1 to batch n)."""
    return sum(n for n, _ in stamps[1:]) / (stamps[-1][1] - stamps[0][1])


def in_process(spec, rows, batch: int) -> dict:
    import numpy as np

    t0 = time.time()
    gen = timed_generator_cls()(spec)
    t_load = time.time() - t0
    stamps, udf = [], []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        out = gen({k: np.array([r[k] for r in chunk]) for k in chunk[0]})
        stamps.append((len(chunk), float(out["t_done"][0])))
        udf.append(float(out["udf_s"][0]))
    return {
        "load_s": t_load,
        "first_batch_s": stamps[0][1] - t0 - t_load,
        "steady_img_s": steady_rate(stamps),
        "batch_s": statistics.median(udf[1:]),
    }


def with_ray(spec, rows, batch: int, cpus: float, gpus: float) -> dict:
    from trce_ray.evaluation.dataflow import Stage, run_stages

    arrivals, done, udf = [], {}, []

    def on_batch(recs, t):
        arrivals.append((len(recs), t))
        for r in recs:
            done[r["t_done"]] = done.get(r["t_done"], 0) + 1
            udf.append(r["udf_s"])

    t0 = time.time()
    run_stages(
        rows,
        [Stage(timed_generator_cls(), spec, actors=1, batch_size=batch, gpus=gpus, cpus=cpus)],
        desc="ray",
        progress=False,
        on_batch=on_batch,
    )
    in_actor = [(n, t) for t, n in sorted(done.items())]
    return {
        "startup_s": in_actor[0][1] - t0,
        "steady_img_s": steady_rate(in_actor),
        "delivered_img_s": steady_rate(arrivals),
        "batch_s": statistics.median(sorted(set(udf))[1:] or udf),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="'tiny' (random tiny SD-1.x), 'toy', or a diffusers folder")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="alternate the two sides this many times each")
    args = ap.parse_args()

    import ray

    from trce_ray.evaluation.generation import GenerationSpec

    work = Path(tempfile.mkdtemp(prefix="trce-bench-"))
    model = args.model
    if model == "tiny":
        from trce_ray.models.tiny import tiny_sd_pipeline

        model = str(work / "tiny-sd")
        tiny_sd_pipeline(seed=0).save_pretrained(model)
    gpus = 1.0 if args.device.startswith("cuda") else 0.0
    ray.init(num_cpus=2 if gpus == 0 else None, include_dashboard=False, log_to_driver=False)
    rows = rows_for(args.images, args.batch_size)
    results = {"in-process": [], "ray": []}
    for rep in range(args.repeats):
        for side in ("in-process", "ray"):
            root = work / f"{side}-{rep}"
            spec = GenerationSpec(
                model=model, deltas=(), image_root=str(root), steps=args.steps, device=args.device, threads=1
            )
            if side == "in-process":
                # A fresh process without Ray: the driver's Ray client threads must not slow the baseline down.
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    results[side].append(pool.submit(in_process, spec, rows, args.batch_size).result())
            else:
                results[side].append(with_ray(spec, rows, args.batch_size, cpus=1.0, gpus=gpus))
            shutil.rmtree(root, ignore_errors=True)
    best = {side: max(r["steady_img_s"] for r in res) for side, res in results.items()}
    median = {side: statistics.median(r["steady_img_s"] for r in res) for side, res in results.items()}
    print(f"model={args.model} images={args.images} batch={args.batch_size} steps={args.steps} device={args.device}")
    for side, res in results.items():
        for i, r in enumerate(res):
            extra = ", ".join(f"{k}={v:.2f}" for k, v in r.items() if k != "steady_img_s")
            print(f"  {side:10s} run {i}: steady {r['steady_img_s']:.2f} img/s ({extra})")
    print(
        f"ratio ray/in-process: best {best['ray'] / best['in-process']:.3f}, "
        f"median {median['ray'] / median['in-process']:.3f} (steady-state images/s)"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
