"""`trce-ray erase --stages text,visual`: stage 1, the trajectory cache and stage 2 in order, resumable as a whole.

Stage 1 is written to the work folder beside the output (`.<name>.work/stage1`) and reused by a rerun whose model
and stage-1 settings are unchanged; the cache is reused by content hash; stage 2 resumes from its last checkpoint.
The output folder appears only when everything is done.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ..config import TRCEConfig
from ..errors import TRCEError
from .train import Stage2Result, run_stage2, work_dir

STAGES = ("text", "visual")


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


def run_erase(
    cfg: TRCEConfig, output: str | Path, stages: tuple[str, ...], overwrite: bool = False, progress: bool = True
) -> Stage2Result:
    """Run the visual stage, after the text stage when asked, into the erase folder `output`."""
    from ..erase import run_stage1

    if "visual" not in stages:
        raise TRCEError("run_erase runs the visual stage; stage 1 alone is trce_ray.erase.run_stage1")
    output = Path(output).expanduser().resolve()
    if output.exists() and not overwrite:
        raise TRCEError(f"output folder {output} already exists; choose another --output or pass --overwrite")
    stage1_dir = None
    if "text" in stages:
        stage1_dir = work_dir(output) / "stage1"
        if not _stage1_matches(stage1_dir, cfg):
            run_stage1(cfg, stage1_dir, overwrite=True, progress=progress)
    result = run_stage2(cfg, output, stage1_dir, overwrite=overwrite, progress=progress)
    if stage1_dir is not None:
        shutil.rmtree(stage1_dir, ignore_errors=True)
    try:
        work_dir(output).rmdir()
    except OSError:
        pass
    return result
