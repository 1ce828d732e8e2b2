"""Flags shared by subcommands, and turning parsed flags into one validated TRCEConfig."""

from __future__ import annotations

import argparse
import os


def add_config_flags(p: argparse.ArgumentParser, output_required: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (see jobs/configs/); flags below override it")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set stage1.eta=0.02 (repeatable)",
    )
    p.add_argument("--model", metavar="PATH_OR_HUB_ID", help="diffusers folder, hub id, or 'toy' (model.path)")
    p.add_argument(
        "--allow-pickle", action="store_true", default=None, help="accept .bin/.ckpt weights (model.allow_pickle)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (model.device)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="weights dtype (model.dtype)")
    p.add_argument("--seed", type=int, help="global seed (seed)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    p.add_argument("--experiment", help="MLflow experiment (tracking.experiment, default trce-ray)")
    p.add_argument(
        "--no-tracking",
        dest="tracking_enabled",
        action="store_false",
        default=None,
        help="do not log this run to MLflow (tracking.enabled)",
    )
    p.add_argument("--output", metavar="DIR", required=output_required, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def common_overrides(args: argparse.Namespace) -> dict:
    return {
        "model.path": args.model,
        "model.allow_pickle": args.allow_pickle,
        "model.device": args.device,
        "model.dtype": args.dtype,
        "seed": args.seed,
        "tracking.uri": args.tracking_uri,
        "tracking.experiment": args.experiment,
        "tracking.enabled": args.tracking_enabled,
        "output": args.output,
    }


def resolve_config(args: argparse.Namespace, overrides: dict):
    """Config file, then named flags, then --set items (last wins); validated once."""
    from ..config import load_config, parse_set

    merged = {**common_overrides(args), **overrides}
    for item in args.sets:
        key, value = parse_set(item)
        merged[key] = value
    return load_config(args.config, merged)


def quiet_threads() -> None:
    """Tiny models on few cores run faster single-threaded (measured: see PLATFORM notes); respect a user's choice."""
    if "OMP_NUM_THREADS" not in os.environ and (os.cpu_count() or 1) <= 4:
        import torch

        torch.set_num_threads(1)
