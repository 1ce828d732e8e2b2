"""`trce-ray erase`: stage 1 (closed-form K/V edit) of TRCE."""

from __future__ import annotations

import argparse

from .common import add_config_flags, quiet_threads, resolve_config

EXAMPLES = """examples:
  trce-ray erase --model CompVis/stable-diffusion-v1-4 --concept sexual --output runs/sexual
  trce-ray erase --config jobs/configs/sd14-sexual.yaml --eta 0.02 --output runs/eta0.02
  trce-ray erase --model toy --erase-prompts erase.txt --target-prompts safe.txt --token eot --token key \
      --output runs/x
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
    g = p.add_argument_group("stage 1")
    g.add_argument(
        "--concept",
        metavar="NAME",
        help="built-in pack (sexual, i2p-malicious, van-gogh, kelly-mckernan) or pack file",
    )
    g.add_argument(
        "--erase-prompts", metavar="FILE", help="one erase prompt a line; [bracket] the keyword for --token key"
    )
    g.add_argument("--target-prompts", metavar="FILE", help="line i = safe counterpart of erase line i")
    g.add_argument(
        "--preserve-prompts", metavar="FILE", help="one preservation prompt a line (default: vendored COCO)"
    )
    g.add_argument("--eta", type=float, help="preservation weight (stage1.eta, default 0.01)")
    g.add_argument(
        "--token",
        dest="tokens",
        action="append",
        choices=None,
        metavar="eot|key|sot",
        help="token role to remap (repeatable; default eot)",
    )
    g.add_argument(
        "--preserve-tokens", choices=["all", "eot"], help="preserve all positions (default) or the first [EoT]"
    )
    g.add_argument("--ridge", type=float, help="UCE-style ridge for singular systems (default 0)")
    g.add_argument("--templates", type=int, help="number of prompt templates (default 15)")
    g.add_argument("--synonyms", type=int, help="use the first N phrases of the pack")
    g.add_argument("--save-pipeline", action="store_true", default=None, help="also save the full edited pipeline")
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


def stage1_overrides(args: argparse.Namespace) -> dict:
    return {
        "stage1.concept": args.concept,
        "stage1.erase_prompts": args.erase_prompts,
        "stage1.target_prompts": args.target_prompts,
        "stage1.preserve_prompts": args.preserve_prompts,
        "stage1.eta": args.eta,
        "stage1.tokens": args.tokens,
        "stage1.preserve_tokens": args.preserve_tokens,
        "stage1.ridge": args.ridge,
        "stage1.templates": args.templates,
        "stage1.synonyms": args.synonyms,
        "stage1.save_pipeline": args.save_pipeline,
        "tracking.register_as": args.register_model,
    }


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args, stage1_overrides(args))
    from ..stage2.pipeline import parse_stages

    stages = parse_stages(args.stages)
    quiet_threads()
    from ..tracking import log_erase_output, track

    with track(cfg, "erase") as tracker:
        if stages != ("text",):
            from ..stage2.pipeline import run_erase

            r = run_erase(cfg, cfg.output, stages, overwrite=args.overwrite)
            version = log_erase_output(tracker, cfg, cfg.output, {"final_loss": r.final_loss})
            summary = f"stages {args.stages}, {len(r.delta_names)} stage-2 tensors, final loss {r.final_loss:.4g}"
        else:
            from ..erase import run_stage1

            result = run_stage1(cfg, cfg.output, overwrite=args.overwrite)
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
