"""The demo's erased rows. A row is a function that writes its artifacts into its own subfolder and returns the
erased pipeline; adding a row (TRCE(V), TRCE(T+V)) is one function and one entry in `ROWS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .packs import pack_name, preserve_file


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
        "model.path": "toy",
        "model.device": cfg.device,
        "seed": cfg.seed,
        "stage1.concept": pack_name(cfg.target),
        "stage1.preserve_prompts": str(preserve_file(cfg.target)),
        **{f"stage1.{k}": v for k, v in cfg.stage1.items()},
    }
    return load_config(None, overrides)


def trce_t(ctx: RowContext):
    """TRCE(T): stage 1 only (closed-form K/V edit of the [EoT] semantics)."""
    from ..erase import run_stage1
    from ..erased import load_erased

    cfg = stage1_config(ctx.cfg)
    run_stage1(cfg, ctx.folder, pipe=ctx.base, progress=False)
    return load_erased(str(ctx.folder), device=ctx.cfg.device)


def _stage2_rows() -> dict[str, Callable[[RowContext], Any]]:
    from ..stage2.toy_rows import trce_tv, trce_v

    return {"TRCE(V)": trce_v, "TRCE(T+V)": trce_tv}


ROWS: dict[str, Callable[[RowContext], Any]] = {
    "TRCE(T)": trce_t,
    **_stage2_rows(),
}
