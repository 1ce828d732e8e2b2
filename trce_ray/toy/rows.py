"""The demo's erased rows. A row is a function that writes its artifacts into its own subfolder and returns the
erased pipeline; adding a row is one function and one entry in `ROWS`.

Stage-2 settings are the paper's except `train.lr: 3e-4`: the toy UNet is ~1M parameters; at the paper's 1e-6
nothing moves and at 1e-3 it loses preservation (measured in docs/stage2.md, "Stage 2 on the toy world"). Sampling
steps and guidance follow the demo's. The trajectory cache goes into the demo output (`stage2-cache/`, a few MB),
shared by the stage-2 rows: it depends on the original model and the draws, not on the stage-1 edit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .packs import pack_name, preserve_file

TOY_TRAIN = {"lr": 3e-4, "num_workers": 0}  # in the demo's process: no worker start-up for a 1M-parameter UNet
MODEL_ALIAS = {"sd": "toy", "flux": "toy-flux"}  # the plug-in's model aliases of the shipped toy models


@dataclass(frozen=True)
class RowContext:
    """What a row may use. `folder` does not exist yet: the row creates it (e.g. with `atomic_dir`)."""

    cfg: Any  # the frozen ToyDemoConfig
    folder: Path  # this row's subfolder, named exactly after the row
    root: Path  # the demo output being written; rows listed earlier have their subfolders here
    base: Any  # the original pipeline, shared: rows must not modify it
    progress: bool = False


def stage1_config(cfg):
    """The TRCEConfig of the demo's stage-1 edit: the toy pack of the target, toy preservation prompts."""
    from ..config import load_config

    overrides = {
        "model.path": cfg.pipeline or MODEL_ALIAS[cfg.family],
        "model.device": cfg.device,
        "seed": cfg.seed,
        "stage1.concept": pack_name(cfg.target),
        "stage1.preserve_prompts": str(preserve_file(cfg.target)),
        **{f"stage1.{k}": v for k, v in cfg.stage1.items()},
    }
    return load_config(None, overrides)


def stage2_config(demo_cfg, cache_root):
    """The demo's stage-1 config (same prompts, model and seed) plus the toy stage-2 settings."""
    from ..config import TRCEConfig
    from ..config.base import validate

    data = stage1_config(demo_cfg).model_dump(mode="json")
    data["cache"].update(steps=demo_cfg.steps, guidance=demo_cfg.guidance, root=str(cache_root))
    if demo_cfg.family == "flux":  # FluxPipeline's native size is 1024; the toy draws 32 x 32
        from .world import SIZE

        data["cache"].update(height=SIZE, width=SIZE)
    data["train"].update(TOY_TRAIN)
    for section, values in demo_cfg.stage2.items():
        data[section].update(values)
    return validate(TRCEConfig, data)


def trce_t(ctx: RowContext):
    """TRCE(T): stage 1 only (closed-form K/V edit of the [EoT] semantics)."""
    from ..models.erased import load_erased
    from ..workflow import run_erasure

    run_erasure(stage1_config(ctx.cfg), ctx.folder, ("text",), progress=False, pipe=ctx.base)
    return load_erased(str(ctx.folder), device=ctx.cfg.device)


def trce_v(ctx: RowContext):
    """TRCE(V): stage 2 alone, from the original model."""
    from ..models.erased import load_erased
    from ..workflow import run_erasure

    run_erasure(stage2_config(ctx.cfg, ctx.root / "stage2-cache"), ctx.folder, ("visual",), progress=ctx.progress)
    return load_erased(str(ctx.folder), device=ctx.cfg.device)


def trce_tv(ctx: RowContext):
    """TRCE(T+V): stage 2 on top of the stage-1 edit (the TRCE(T) row's, when that row ran first)."""
    from ..models.erased import load_erased
    from ..stage2.run import run_stage2
    from ..workflow import run_erasure

    cfg = stage2_config(ctx.cfg, ctx.root / "stage2-cache")
    stage1_dir = ctx.root / "TRCE(T)"
    if (stage1_dir / "stage1.safetensors").is_file():
        run_stage2(cfg, ctx.folder, stage1_dir, progress=ctx.progress)
    else:
        run_erasure(cfg, ctx.folder, ("text", "visual"), progress=ctx.progress)
    return load_erased(str(ctx.folder), device=ctx.cfg.device)


ROWS: dict[str, Callable[[RowContext], Any]] = {"TRCE(T)": trce_t, "TRCE(V)": trce_v, "TRCE(T+V)": trce_tv}
