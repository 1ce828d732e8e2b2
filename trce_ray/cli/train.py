"""`trce-ray train`: TRCE stage 2 (Denoising Trajectory Steering) with Ray Train, from a stage-1 output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_config_flags, quiet_threads, resolve_config

EXAMPLES = """examples:
  trce-ray train --stage1 runs/sexual-text --output runs/sexual
  trce-ray train --stage1 runs/sexual-text --output runs/sexual --num-workers 4 --backend deepspeed --zero-stage 2
  trce-ray train --model toy --concept sexual --output runs/v-only          # TRCE(V): from the original model
  trce-ray train --stage1 runs/x --output runs/x-lora --lora-rank 8 --set train.params=kv
Rerun the same command after an interruption: it reuses the cache and resumes from the last checkpoint.
"""


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """Where the prompts and model come from: a stage-1 folder's config.yaml, or flags (shared with `cache`)."""
    p.add_argument("--stage1", metavar="DIR", help="stage-1 output folder: start from its edit, use its config.yaml")
    p.add_argument("--concept", metavar="NAME", help="concept pack whose prompts make trajectories (stage1.concept)")
    g = p.add_argument_group("trajectory cache")
    g.add_argument("--cache-root", metavar="DIR", help="folder holding caches, shared by all nodes (cache.root)")
    g.add_argument(
        "--cache-mode",
        choices=["planned", "paper"],
        help="planned: sample only what training draws (default); paper: 100 + 2000 full trajectories",
    )
    g.add_argument("--num-actors", type=int, help="Ray Data actors sampling trajectories (cache.num_actors)")
    g.add_argument("--gpus-per-actor", type=float, help="GPUs per cache actor (cache.num_gpus)")


def source_overrides(args: argparse.Namespace) -> dict:
    return {
        "stage1.concept": args.concept,
        "cache.root": args.cache_root,
        "cache.mode": args.cache_mode,
        "cache.num_actors": args.num_actors,
        "cache.num_gpus": args.gpus_per_actor,
    }


def resolve_stage2_config(args: argparse.Namespace, overrides: dict):
    """--config, else the stage-1 folder's config.yaml, then flags and --set items."""
    if args.stage1 and not Path(args.stage1).expanduser().is_dir():
        from ..errors import TRCEError

        raise TRCEError(f"--stage1 {args.stage1} is not a folder; give a stage-1 output folder (trce-ray erase)")
    if args.stage1 and not args.config:
        stage1_config = Path(args.stage1).expanduser() / "config.yaml"
        if stage1_config.is_file():
            args.config = str(stage1_config)
    return resolve_config(args, {**source_overrides(args), **overrides}, uses_cache=True)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="stage 2: steer early denoising away from the concept (Ray Train)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune the stage-1 model against cached trajectories of the original model (TRCE Sec. 4.2) "
        "and write an erase folder with stage1.safetensors + stage2.safetensors.",
    )
    add_config_flags(p)
    add_source_flags(p)
    g = p.add_argument_group("stage 2")
    g.add_argument("--epochs", type=int, help="passes over the malicious trajectories (train.epochs, default 3)")
    g.add_argument("--lr", type=float, help="Adam learning rate (train.lr, default 1e-6)")
    g.add_argument("--beta", type=float, help="guidance enhancement of f_safe/f_unsafe (train.beta, default 15)")
    g.add_argument("--lam", type=float, help="weight of the preservation term (train.lam, default 100)")
    g.add_argument("--margin", type=float, help="triplet margin (train.margin, default 0.01)")
    g.add_argument("--batch-size", type=int, help="malicious draws per step over all workers (train.batch_size)")
    g.add_argument("--params", choices=["visual", "kv"], help="parameter set (train.params, default visual)")
    g.add_argument("--lora-rank", type=int, help="train LoRA of this rank on the set (train.lora_rank)")
    g.add_argument("--backend", choices=["ddp", "deepspeed"], help="train.backend (default ddp)")
    g.add_argument("--blocks", choices=["default", "encoder", "all"], help="blocks of the set (train.blocks)")
    g.add_argument("--zero-stage", type=int, choices=[1, 2, 3], help="DeepSpeed ZeRO stage (train.zero_stage)")
    g.add_argument(
        "--mixed-precision",
        "--precision",
        choices=["no", "bf16", "fp16"],
        help="GPU mixed precision (train.mixed_precision, default no)",
    )
    g.add_argument("--num-workers", type=int, help="Ray Train workers; 0 = in this process (train.num_workers)")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (train.checkpoint_every)")
    g.add_argument("--max-steps", type=int, help="stop after N steps, for smoke runs (train.max_steps)")
    p.set_defaults(run=run)


def train_overrides(args: argparse.Namespace) -> dict:
    names = [
        "epochs",
        "lr",
        "beta",
        "lam",
        "margin",
        "batch_size",
        "params",
        "lora_rank",
        "backend",
        "zero_stage",
        "mixed_precision",
        "blocks",
        "num_workers",
        "checkpoint_every",
        "max_steps",
    ]
    return {f"train.{n}": getattr(args, n) for n in names}


def run(args: argparse.Namespace) -> int:
    cfg = resolve_stage2_config(args, train_overrides(args))
    quiet_threads()
    from ..stage2.run import log_training_curve, run_stage2
    from ..tracking import log_erase_output, track

    with track(cfg, "train") as tracker:
        result = run_stage2(cfg, cfg.output, args.stage1, overwrite=args.overwrite)
        log_training_curve(tracker, result.output)
        version = log_erase_output(tracker, cfg, result.output, {"final_loss": result.final_loss})
    if version is not None:
        print(f"registered {cfg.tracking.register_as} version {version} in the MLflow model registry")
    print(
        f"wrote {result.output}/stage2.safetensors: {len(result.delta_names)} tensors after {result.steps} steps, "
        f"final loss {result.final_loss:.4g}; cache {result.cache.path} "
        f"({'reused' if result.cache.reused else f'{result.cache.shards_built} shards built'})"
    )
    return 0
