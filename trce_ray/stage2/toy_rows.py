"""The toy demo's stage-2 rows, TRCE(V) and TRCE(T+V) (registered in `trce_ray/toy/rows.py`).

Settings are the paper's except `train.lr: 1e-3` and `train.epochs: 10`: the toy UNet is ~1M parameters and at the
paper's 1e-6 nothing moves (measured in docs/stage2.md, "Planned vs paper counts on the toy world"). Sampling steps
and guidance follow the demo's. The cache lives in the user's cache folder, so a second demo run reuses it.
"""

from __future__ import annotations

import os
from pathlib import Path

TOY_STAGE2 = {"train.lr": 1e-3, "train.epochs": 10, "train.num_workers": 0}


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "trce-ray" / "trajectories"


def toy_stage2_config(demo_cfg):
    """The demo's stage-1 config (same prompts, model and seed) plus the toy stage-2 settings."""
    from ..config import load_config
    from ..toy.rows import stage1_config

    s1 = stage1_config(demo_cfg)
    sections = {k: v for k, v in s1.model_dump(mode="json").items() if isinstance(v, dict)}
    flat = {f"{sec}.{k}": v for sec, d in sections.items() for k, v in d.items() if v is not None}
    return load_config(None, {
        **flat, "seed": s1.seed, "cache.steps": demo_cfg.steps, "cache.guidance": demo_cfg.guidance,
        "cache.root": str(cache_root()), **TOY_STAGE2,
    })


def trce_v(ctx):
    """TRCE(V): stage 2 alone, from the original model."""
    from ..erased import load_erased
    from .train import run_stage2

    run_stage2(toy_stage2_config(ctx.cfg), ctx.folder, None, progress=ctx.progress)
    return load_erased(str(ctx.folder), device=ctx.cfg.device)


def trce_tv(ctx):
    """TRCE(T+V): stage 2 on top of the stage-1 edit (the TRCE(T) row's, when that row ran first)."""
    from ..erased import load_erased
    from .pipeline import run_erase
    from .train import run_stage2

    cfg = toy_stage2_config(ctx.cfg)
    stage1_dir = ctx.root / "TRCE(T)"
    if (stage1_dir / "stage1.safetensors").is_file():
        run_stage2(cfg, ctx.folder, stage1_dir, progress=ctx.progress)
    else:
        run_erase(cfg, ctx.folder, ("text", "visual"), progress=ctx.progress)
    return load_erased(str(ctx.folder), device=ctx.cfg.device)
