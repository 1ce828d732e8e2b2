"""`trce-ray erase`: stage 1 (closed-form K/V edit) of TRCE."""

from __future__ import annotations

import argparse

from .common import add_config_flags, add_stage1_flags, quiet_threads, resolve_config, stage1_overrides

EXAMPLES = """examples:
  trce-ray erase --model CompVis/stable-diffusion-v1-4 --concept sexual --output runs/sexual
  trce-ray erase --config jobs/configs/sd14-sexual.yaml --eta 0.02 --output runs/eta0.02
  trce-ray erase --model toy --erase-prompts erase.txt --target-prompts safe.txt --token eot --token key \
      --output runs/x
  trce-ray erase --model toy --concept toy-red --concept toy-blue --output runs/red-blue   # one joint solve
  trce-ray erase --model CompVis/stable-diffusion-v1-4 --concept celebs.txt --family person --anchor "a person" \
      --retain keep-celebs.txt --output runs/celebs       # names files: one name a line
  trce-ray erase --model toy --concept sexual --stages text,visual --output runs/t-plus-v   # stage 1, cache, stage 2
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "erase",
        help="erase a concept (stage 1: closed-form K/V edit)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Erase a concept with TRCE stage 1 and write stage1.safetensors (edited K/V weights only).",
    )
    add_config_flags(p)
    add_stage1_flags(p)
    p.add_argument(
        "--register-model",
        metavar="NAME",
        help="register the erased model in the MLflow model registry (tracking.register_as)",
    )
    p.add_argument(
        "--stages",
        default="text",
        metavar="text,visual",
        help="text (stage 1, default), visual (stage 2 alone) or text,visual; tune with --set train.*",
    )
    p.set_defaults(run=run)


def erase_overrides(args: argparse.Namespace) -> dict:
    return {**stage1_overrides(args), "tracking.register_as": args.register_model}


def run(args: argparse.Namespace) -> int:
    from ..workflow import parse_stages

    stages = parse_stages(args.stages)
    cfg = resolve_config(args, erase_overrides(args), uses_cache="visual" in stages)
    quiet_threads()
    from ..tracking import log_erase_output, track
    from ..workflow import run_erasure

    with track(cfg, "erase") as tracker:
        done = run_erasure(cfg, cfg.output, stages, overwrite=args.overwrite)
        if done.stage2 is not None:
            from ..stage2.run import log_training_curve

            r = done.stage2
            log_training_curve(tracker, r.output)
            version = log_erase_output(tracker, cfg, cfg.output, {"final_loss": r.final_loss})
            summary = f"stages {args.stages}, {len(r.delta_names)} stage-2 tensors, final loss {r.final_loss:.4g}"
        else:
            result = done.stage1
            version = log_erase_output(tracker, cfg, cfg.output, {**result.diagnostics, **result.timings})
            d = result.diagnostics
            summary = (
                f"{len(result.delta)} K/V matrices, erase residual {d['erase_residual']:.3g}, "
                f"preserve drift {d['preserve_drift']:.3g}"
            )
    print(f"wrote {cfg.output}: {summary}")
    if version is not None:
        print(f"registered {cfg.tracking.register_as} version {version} in the MLflow model registry")
    return 0
