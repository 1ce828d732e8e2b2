"""TRCE's stages in order: `run_erasure` is the one call behind `trce-ray erase`, sweep trials and the toy rows.

`--stages text` runs stage 1 alone (TRCE(T)), `visual` stage 2 from the original model (TRCE(V)), `text,visual`
stage 1, the trajectory cache and stage 2 (TRCE(T+V)). With both, stage 1 is written to the work folder beside the
output (`.<name>.work/stage1`) and reused by a rerun whose model and stage-1 settings are unchanged; the cache is
reused by content hash; stage 2 resumes from its last checkpoint. The output folder appears only when everything is
done.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import TRCEConfig
from .errors import TRCEError
from .stage1.run import Stage1Result, run_stage1
from .stage2.run import Stage2Result, run_stage2, work_dir

STAGES = ("text", "visual")


@dataclass
class ErasureResult:
    output: Path
    stages: tuple[str, ...]
    stage1: Stage1Result | None  # the stage-1 edit computed by this call (None: visual only, or reused)
    stage2: Stage2Result | None  # None: text only


def parse_stages(text: str) -> tuple[str, ...]:
    """ "text", "visual" or "text,visual" (TRCE(T), TRCE(V), TRCE(T+V))."""
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages or len(set(stages)) != len(stages):
        raise TRCEError(f"--stages {text!r}: give text, visual or text,visual")
    return tuple(s for s in STAGES if s in stages)


def _stage1_matches(folder: Path, cfg: TRCEConfig) -> bool:
    if not (folder / "stage1.safetensors").is_file() or not (folder / "config.yaml").is_file():
        return False
    old = yaml.safe_load((folder / "config.yaml").read_text())
    new = cfg.model_dump(mode="json")
    return old.get("model") == new["model"] and old.get("stage1") == new["stage1"]


def run_erasure(
    cfg: TRCEConfig,
    output: str | Path,
    stages: tuple[str, ...],
    overwrite: bool = False,
    progress: bool = True,
    pipe=None,
) -> ErasureResult:
    """Run `stages` (from `parse_stages`) of `cfg` into the erase folder `output`.

    Args:
        pipe: the already loaded base pipeline, used by stage 1 instead of loading `cfg.model` again (stage 2 loads
            its own in each training worker); it is not modified.
    """
    if stages == ("text",):
        return ErasureResult(
            Path(output), stages, run_stage1(cfg, output, overwrite=overwrite, pipe=pipe, progress=progress), None
        )
    if "visual" not in stages:
        raise TRCEError(f"unknown stages {stages}; parse them with trce_ray.workflow.parse_stages")
    output = Path(output).expanduser().resolve()
    if output.exists() and not overwrite:
        raise TRCEError(f"output folder {output} already exists; choose another --output or pass --overwrite")
    stage1_dir, stage1 = None, None
    if "text" in stages:
        stage1_dir = work_dir(output) / "stage1"
        if not _stage1_matches(stage1_dir, cfg):
            stage1 = run_stage1(cfg, stage1_dir, overwrite=True, pipe=pipe, progress=progress)
    result = run_stage2(cfg, output, stage1_dir, overwrite=overwrite, progress=progress)
    if stage1_dir is not None:
        shutil.rmtree(stage1_dir, ignore_errors=True)
    try:
        work_dir(output).rmdir()
    except OSError:
        pass
    return ErasureResult(output, stages, stage1, result)
