"""The toy demo's stage-2 rows, TRCE(V) and TRCE(T+V) (registered in `trce_ray/toy/rows.py`).

Settings are the paper's except `train.lr: 3e-4`: the toy UNet is ~1M parameters; at the paper's 1e-6 nothing moves
and at 1e-3 it loses preservation (measured in docs/stage2.md, "Stage 2 on the toy world"). Sampling steps and
guidance follow the demo's. The trajectory cache goes into the demo output (`stage2-cache/`, a few MB), shared by
both rows: it depends on the original model and the draws, not on the stage-1 edit.
"""

from __future__ import annotations

TOY_TRAIN = {"lr": 3e-4, "num_workers": 0}  # in the demo's process: no worker start-up for a 1M-parameter UNet


def toy_stage2_config(demo_cfg, cache_root):
    """The demo's stage-1 config (same prompts, model and seed) plus the toy stage-2 settings."""
    from ..config import TRCEConfig
    from ..config.base import validate
    from ..toy.rows import stage1_config

    data = stage1_config(demo_cfg).model_dump(mode="json")
    data["cache"].update(steps=demo_cfg.steps, guidance=demo_cfg.guidance, root=str(cache_root))
    data["train"].update(TOY_TRAIN)
    return validate(TRCEConfig, data)


def trce_v(ctx):
    """TRCE(V): stage 2 alone, from the original model."""
    from ..erased import load_erased
    from .train import run_stage2

    run_stage2(toy_stage2_config(ctx.cfg, ctx.root / "stage2-cache"), ctx.folder, None, progress=ctx.progress)
    return load_erased(str(ctx.folder), device=ctx.cfg.device)


def trce_tv(ctx):
    """TRCE(T+V): stage 2 on top of the stage-1 edit (the TRCE(T) row's, when that row ran first)."""
    from ..erased import load_erased
    from .pipeline import run_erase
    from .train import run_stage2

    cfg = toy_stage2_config(ctx.cfg, ctx.root / "stage2-cache")
    stage1_dir = ctx.root / "TRCE(T)"
    if (stage1_dir / "stage1.safetensors").is_file():
        run_stage2(cfg, ctx.folder, stage1_dir, progress=ctx.progress)
    else:
        run_erase(cfg, ctx.folder, ("text", "visual"), progress=ctx.progress)
    return load_erased(str(ctx.folder), device=ctx.cfg.device)
