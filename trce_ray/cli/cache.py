"""`trce-ray cache`: build the stage-2 trajectory cache (original model, Ray Data actor pool) ahead of training."""

from __future__ import annotations

import argparse

from .common import add_config_flags, quiet_threads
from .train import add_source_flags, resolve_stage2_config

EXAMPLES = """examples:
  trce-ray cache --stage1 runs/sexual-text                     # what `trce-ray train --stage1 runs/sexual-text` needs
  trce-ray cache --model CompVis/stable-diffusion-v1-4 --concept sexual --num-actors 8 --gpus-per-actor 1
  trce-ray cache --config jobs/configs/sd14-sexual-stage2.yaml --cache-mode paper   # the paper's full counts
An interrupted run resumes shard by shard; a complete cache is reused as is.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cache",
        help="stage 2: sample and store the original model's trajectories (Ray Data)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Plan every training draw, then sample the original model's DDIM trajectories only as deep as "
        "those draws and store z_t, t and the reference predictions in parquet shards.",
    )
    add_config_flags(p, output_required=False)
    add_source_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_stage2_config(args, {})
    quiet_threads()
    from ..stage2.cache import build_cache
    from ..stage2.run import plan_for

    plan, specs = plan_for(cfg)
    info = build_cache(cfg, specs)
    state = "reused (complete)" if info.reused else f"{info.shards_built} of {info.shards_total} shards built"
    print(
        f"cache {info.path}: {state}; {len(specs)} trajectories for {plan.steps} training steps, "
        f"{info.denoiser_rows} denoiser evaluations"
    )
    return 0
