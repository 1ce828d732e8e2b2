"""`trce-ray cache`: build the stage-2 trajectory cache (original model, Ray Data actor pool) ahead of training;
`trce-ray cache ls` and `trce-ray cache prune` show and trim the caches under a cache root."""

from __future__ import annotations

import argparse
import re
import time

from ..errors import TRCEError
from .common import add_config_flags, quiet_threads
from .train import add_source_flags, resolve_stage2_config

EXAMPLES = """examples:
  trce-ray cache --stage1 runs/sexual-text                     # what `trce-ray train --stage1 runs/sexual-text` needs
  trce-ray cache --model CompVis/stable-diffusion-v1-4 --concept sexual --num-actors 8 --gpus-per-actor 1
  trce-ray cache --config jobs/configs/sd14-sexual-stage2.yaml --cache-mode paper   # the paper's full counts
  trce-ray cache ls --cache-root /mnt/shared/trce-cache         # size, last use, model and settings of each cache
  trce-ray cache prune --older-than 30d --max-size 200G --dry-run
An interrupted run resumes shard by shard; a complete cache is reused as is (a damaged shard is sampled again).
Caches are never deleted by other commands; see docs/stage2.md for the policy.
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
    sub = p.add_subparsers(dest="action", metavar="[ls|prune]")
    ls = sub.add_parser("ls", help="list the caches under a cache root: size, last use, model, settings")
    prune = sub.add_parser(
        "prune", help="delete caches unused for a while, or the least recently used beyond a total size"
    )
    for q in (ls, prune):
        q.add_argument("--cache-root", dest="root", metavar="DIR", default="trce-cache", help="(default trce-cache)")
    prune.add_argument("--older-than", metavar="AGE", help="last used longer ago than AGE (e.g. 30d, 12h)")
    prune.add_argument("--max-size", metavar="SIZE", help="then keep the most recently used within SIZE (e.g. 50G)")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    ls.set_defaults(run=run_ls)
    prune.set_defaults(run=run_prune)


_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """ "50G", "500M", "1.5T", "1000" (bytes, decimal units) -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)b?\s*", text.lower())
    if not m:
        raise TRCEError(f"--max-size {text!r}: give a size such as 500M, 50G or 1T")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_age(text: str) -> float:
    """ "30d", "12h", "90m", "2w" -> seconds (a bare number is days)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([smhdw]?)\s*", text.lower())
    if not m:
        raise TRCEError(f"--older-than {text!r}: give an age such as 30d, 12h or 2w")
    return float(m.group(1)) * _AGES[m.group(2) or "d"]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _row(e) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
    state = "in use" if e.in_use else ("complete" if e.complete else "partial")
    return f"{e.path.name:<22}{_size(e.bytes):>10}  {when}  {state:<9} {e.model}  ({e.settings})"


def _entries(root: str) -> list:
    """Trajectory caches and stage-1 statistics under `root`, least recently used first."""
    from ..stage1.stats import list_stats
    from ..stage2.cache import list_caches

    return sorted(list_caches(root) + list_stats(root), key=lambda e: e.last_used)


def run_ls(args: argparse.Namespace) -> int:
    entries = _entries(args.root)
    if not entries:
        print(f"no trajectory caches or stage-1 statistics in {args.root}")
        return 0
    print(f"{'CACHE':<22}{'SIZE':>10}  {'LAST USED':<16}  {'STATE':<9} MODEL  (SETTINGS)")
    for e in entries:
        print(_row(e))
    print(f"{len(entries)} caches, {_size(sum(e.bytes for e in entries))} in {args.root}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from ..stage2.cache import caches_to_prune, remove_cache

    if args.older_than is None and args.max_size is None:
        raise TRCEError("cache prune needs --older-than AGE and/or --max-size SIZE")
    age = parse_age(args.older_than) if args.older_than else None
    size = parse_size(args.max_size) if args.max_size else None
    entries = _entries(args.root)
    chosen = caches_to_prune(entries, age, size)
    verb = "would delete" if args.dry_run else "deleted"
    freed = 0
    for e in chosen:
        if args.dry_run or remove_cache(e):
            freed += e.bytes
            print(f"{verb} {_row(e)}")
    busy = [e for e in entries if e.in_use]
    kept = len(entries) - len(chosen)
    note = f" ({len(busy)} in use, never pruned)" if busy else ""
    print(f"{verb} {len(chosen)} caches ({_size(freed)}); {kept} kept{note}")
    return 0


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
