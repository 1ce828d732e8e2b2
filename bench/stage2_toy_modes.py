"""Planned cache vs the paper's counts on the toy world: erasure and preservation of TRCE(V) and TRCE(T+V).

Same training settings for both cache modes; each seed changes the trajectories and the draws. Prints one JSON line
per (row, mode, seed) with the toy benchmark's metrics, the cache's denoiser rows and timings.

    OMP_NUM_THREADS=1 python bench/stage2_toy_modes.py                       # 2 seeds, lr 3e-4, 3 epochs
    OMP_NUM_THREADS=1 python bench/stage2_toy_modes.py --seeds 0 1 2 --set train.margin=0.1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from trce_ray import load_erased
from trce_ray.config import load_config, parse_set
from trce_ray.models import load_pipeline
from trce_ray.stage1.run import run_stage1
from trce_ray.stage2.cache import ensure_ray
from trce_ray.stage2.run import run_stage2
from trce_ray.toy.assets import load_toy_classifier, toy_pipeline_dir
from trce_ray.toy.bench import SET_NAMES, classify, generate, prompt_sets, score
from trce_ray.toy.demo import ToyDemoConfig
from trce_ray.toy.rows import stage1_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--modes", nargs="+", default=["planned", "paper"], choices=["planned", "paper"])
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=["train.lr=3e-4"],
        metavar="KEY=VALUE",
        help="stage-2 config overrides (default: the toy demo's lr 3e-4)",
    )
    ap.add_argument("--work", default=None, help="folder for caches and outputs (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ensure_ray(num_cpus=2)
    work = Path(args.work or tempfile.mkdtemp(prefix="stage2-toy-"))
    demo = ToyDemoConfig()
    sets = prompt_sets(demo.target, demo.n_direct, demo.n_paraphrase, demo.n_per_colour, demo.seed)
    classifier = load_toy_classifier()
    base = load_pipeline(str(toy_pipeline_dir()), device="cpu")

    def evaluate(pipe, reference=None):
        preds = {s: classify(classifier, generate(pipe, sets[s], demo.steps, demo.guidance, 64)) for s in SET_NAMES}
        return score(demo.target, sets, preds, reference), preds["preservation"]["features"]

    original, reference = evaluate(base)
    print(json.dumps({"row": "original", **original}), flush=True)
    s1 = stage1_config(demo)
    run_stage1(s1, work / "s1", pipe=base, overwrite=True, progress=False)
    print(
        json.dumps({"row": "TRCE(T)", **evaluate(load_erased(str(work / "s1"), device="cpu"), reference)[0]}),
        flush=True,
    )
    sections = {k: v for k, v in s1.model_dump(mode="json").items() if isinstance(v, dict)}
    flat = {f"{sec}.{k}": v for sec, d in sections.items() for k, v in d.items() if v is not None}
    for seed in args.seeds:
        for mode in args.modes:
            over = {
                **flat,
                "seed": seed,
                "cache.steps": demo.steps,
                "cache.guidance": demo.guidance,
                "cache.root": str(work / "cache"),
                "cache.mode": mode,
                "train.num_workers": 0,
                **dict(parse_set(s) for s in args.sets),
            }
            cfg = load_config(None, over)
            for name, stage1_dir in (("TRCE(V)", None), ("TRCE(T+V)", work / "s1")):
                t0 = time.perf_counter()
                res = run_stage2(cfg, work / "out", stage1_dir, overwrite=True, progress=False)
                seconds = time.perf_counter() - t0
                metrics, _ = evaluate(load_erased(str(work / "out"), device="cpu"), reference)
                print(
                    json.dumps(
                        {
                            "row": name,
                            "mode": mode,
                            "seed": seed,
                            **metrics,
                            "cache_rows": res.cache.denoiser_rows,
                            "cache_reused": res.cache.reused,
                            "cache_s": round(res.cache.seconds, 1),
                            "stage2_s": round(seconds, 1),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
