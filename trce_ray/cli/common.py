"""Flags shared by subcommands, and turning parsed flags into one validated TRCEConfig."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any


def add_set_flag(p, help: str) -> None:
    """`--set KEY=VALUE` (repeatable), collected into `args.sets`."""
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_config_flags(p: argparse.ArgumentParser, output_required: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (see jobs/configs/); flags below override it")
    add_set_flag(p, "override any config field, e.g. --set stage1.eta=0.02 (repeatable)")
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
    p.add_argument(
        "--allow-job-local-paths",
        action="store_true",
        default=None,
        help="inside a Ray job, accept outputs in the job's temporary folder (allow_job_local_paths; docs/cluster.md)",
    )


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
        "allow_job_local_paths": args.allow_job_local_paths,
    }


def resolve_config(args: argparse.Namespace, overrides: dict, uses_cache: bool | Callable[[Any], bool] = False):
    """Config file, then named flags, then --set items (last wins); validated once, every path made absolute here.

    Inside a Ray job, what the command writes (output, checkpoints, images, the MLflow database, and `cache.root` when
    `uses_cache`, a bool or a test of the config) must not land in the job's temporary folder (config/paths.py).
    """
    from ..config import load_config, parse_set
    from ..config.paths import WRITTEN_FIELDS, check_job_paths, written_paths

    merged = {**common_overrides(args), **overrides}
    for item in args.sets:
        key, value = parse_set(item)
        merged[key] = value
    cfg = load_config(args.config, merged)
    cache = uses_cache(cfg) if callable(uses_cache) else uses_cache
    fields = tuple(f for f in WRITTEN_FIELDS if cache or f != "cache.root")
    check_job_paths(written_paths(cfg, fields), cfg.allow_job_local_paths)
    return cfg


def quiet_threads() -> None:
    """Tiny models on few cores run faster single-threaded (measured: see PLATFORM notes); respect a user's choice."""
    if "OMP_NUM_THREADS" not in os.environ and (os.cpu_count() or 1) <= 4:
        import torch

        torch.set_num_threads(1)


def add_stage1_flags(p: argparse.ArgumentParser) -> None:
    """The stage-1 flags shared by erase and sweep."""
    g = p.add_argument_group("stage 1")
    g.add_argument(
        "--concept",
        metavar="NAME",
        action="append",
        help="built-in pack (sexual, i2p-malicious, van-gogh, kelly-mckernan), pack file, or names file (.txt, one "
        "name a line); repeat to erase several concepts in one solve, each with its own anchor",
    )
    g.add_argument(
        "--family", choices=["person", "artist", "object"], help="template family of names files (default person)"
    )
    g.add_argument("--anchor", metavar="TEXT", help="safe anchor of names files (default: 'a person', ...)")
    g.add_argument(
        "--retain", metavar="NAMES_FILE", help="names to keep, expanded over the same templates into preservation"
    )
    g.add_argument(
        "--erase-prompts", metavar="FILE", help="one erase prompt a line; [bracket] the keyword for --token key"
    )
    g.add_argument("--target-prompts", metavar="FILE", help="line i = safe counterpart of erase line i")
    g.add_argument(
        "--preserve-prompts", metavar="FILE", help="one preservation prompt a line (default: vendored COCO)"
    )
    g.add_argument("--eta", type=float, help="preservation weight (stage1.eta, default 0.01, in stage1.convention)")
    g.add_argument(
        "--token",
        dest="tokens",
        action="append",
        choices=None,
        metavar="ROLE",
        help="token role to remap: eot, last, key, all, sot, pad, or SEGMENT:ROLE with SEGMENT clip or t5 "
        "(repeatable; default: the model family's, see docs/models.md)",
    )
    g.add_argument(
        "--preserve-tokens",
        choices=["all", "eot"],
        help="preserve all positions or the first [EoT] (default: stage1.convention's; docs/stage1.md)",
    )
    g.add_argument("--ridge", type=float, help="UCE-style ridge for singular systems (default 0)")
    g.add_argument("--templates", type=int, help="number of prompt templates (default 15)")
    g.add_argument("--synonyms", type=int, help="use the first N phrases of the pack")
    g.add_argument("--save-pipeline", action="store_true", default=None, help="also save the full edited pipeline")


def stage1_overrides(args: argparse.Namespace) -> dict:
    return {
        "stage1.concept": args.concept[0] if args.concept and len(args.concept) == 1 else args.concept,
        "stage1.family": args.family,
        "stage1.anchor": args.anchor,
        "stage1.retain": args.retain,
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
    }
