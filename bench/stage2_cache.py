"""Cost of the stage-2 trajectory cache, counted in denoiser rows (one row = one UNet evaluation of one latent).

1. Per sampled step: our recording sampler vs plain classifier-free sampling (diffusers' pipeline) of the same
   trajectories, both counted by a forward hook on the same tiny UNet in this process.
2. The "sexual" recipe (built-in pack, 100 malicious trajectories, 3 epochs, 50 DDIM steps): planned cache vs the
   paper's counts (100 + 2,000 full trajectories), counted from the real plans; with --execute both caches are
   also sampled for real on the tiny model (no Ray) and the hook count and wall time are reported.

    OMP_NUM_THREADS=1 python bench/stage2_cache.py
    OMP_NUM_THREADS=1 python bench/stage2_cache.py --execute planned paper
"""

from __future__ import annotations

import argparse
import time

import torch

from trce_ray.config import load_config
from trce_ray.models import adapter_for
from trce_ray.models.tiny import tiny_sd_pipeline
from trce_ray.stage2.plan import MALICIOUS, make_plan, sampling_cost
from trce_ray.stage2.run import plan_for
from trce_ray.stage2.sampler import ddim_scheduler, sample_trajectories


class RowCounter:
    def __init__(self, module):
        self.rows = 0
        module.register_forward_pre_hook(lambda m, args, kwargs: self._count(args, kwargs), with_kwargs=True)

    def _count(self, args, kwargs):
        self.rows += (args[0] if args else kwargs["sample"]).shape[0]


def per_step(steps: int, n: int) -> None:
    pipe = tiny_sd_pipeline(0)
    pipe.scheduler = ddim_scheduler(pipe)
    adapter = adapter_for(pipe)
    counter = RowCounter(pipe.unet)
    cfg = load_config(
        None,
        {
            "model.path": "unused",
            "stage1.concept": "sexual",
            "cache.steps": steps,
            "cache.malicious_samples": n,
            "cache.mode": "paper",
        },
    )
    _, specs = make_plan(cfg, [("a photo of a nude woman", "a photo of a clothed woman")])
    mal = [s for s in specs if s.kind == MALICIOUS]
    counter.rows = 0
    sample_trajectories(adapter, mal, steps, 7.5, adapter.latent_shape(), len(mal))
    ours = counter.rows
    counter.rows = 0
    pipe([s.prompt for s in mal], num_inference_steps=steps, guidance_scale=7.5, output_type="latent")
    plain = counter.rows
    kept = len(mal[0].record)
    print(f"per sampled step ({n} trajectories x {steps} DDIM steps, {kept} recorded each):")
    print(
        f"  plain classifier-free sampling: {plain / (n * steps):.2f} rows/step; ours: {ours / (n * steps):.2f} "
        f"rows/step -> {ours / plain:.2f}x over the trajectory; at a recorded step 3 vs 2 rows = 1.50x"
    )


def recipe(preserve: int, execute: list[str]) -> None:
    costs = {}
    for mode in ("planned", "paper"):
        cfg = load_config(
            None,
            {
                "model.path": "unused",
                "stage1.concept": "sexual",
                "cache.mode": mode,
                "train.preserve_per_sample": preserve,
            },
        )
        plan, specs = plan_for(cfg)
        costs[mode] = (plan, specs, sampling_cost(specs))
    plan = costs["planned"][0]
    draws = plan.erase_item.size
    print(
        f"\nsexual recipe, R={preserve} preservation draw(s) per erase draw: {plan.steps} steps, {draws} erase + "
        f"{plan.preserve_item.size} preservation draws"
    )
    for mode, (_, specs, rows) in costs.items():
        n_m = sum(s.kind == MALICIOUS for s in specs)
        print(
            f"  {mode:8s}: {n_m} malicious + {len(specs) - n_m} unconditional trajectories, "
            f"{sum(s.depth for s in specs)} sampled steps, {rows} denoiser rows"
            f" ({rows / draws + 2 + preserve:.1f} rows per erase draw with training)"
        )
    print(f"  planned / paper counts: {costs['planned'][2] / costs['paper'][2]:.3f}x")
    mal = [s for s in costs["planned"][1] if s.kind == MALICIOUS]
    steps = sum(s.depth for s in mal)
    print(
        f"  planned malicious trajectories: {sampling_cost(mal) / steps:.2f} rows per sampled step vs 2.00 for plain"
        f" classifier-free sampling ({sampling_cost(mal) / (2 * steps):.2f}x)"
    )
    for mode in execute:
        specs = costs[mode][1]
        pipe = tiny_sd_pipeline(0)
        adapter = adapter_for(pipe)
        counter = RowCounter(pipe.unet)
        t0 = time.perf_counter()
        for kind in ("malicious", "unconditional"):
            group = [s for s in specs if s.kind == kind]
            sample_trajectories(adapter, group, 50, 7.5, adapter.latent_shape(), 32)
        print(
            f"  executed {mode} on the tiny UNet: {counter.rows} rows counted by the hook "
            f"(plan says {costs[mode][2]}), {time.perf_counter() - t0:.0f} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--execute", nargs="*", default=[], choices=["planned", "paper"])
    args = ap.parse_args()
    torch.manual_seed(0)
    per_step(50, 8)
    recipe(1, args.execute)
    recipe(4, [])


if __name__ == "__main__":
    main()
