"""Work that sweep trials share instead of each computing it again.

- Stage 1 depends only on the model and the `stage1` section: trials with equal ones reuse one result, computed
  once into `<sweep>/shared/stage1-<hash>/` (under a lock, so concurrent trials wait for the first) and copied
  into each trial's erase folder (text only) or its stage-2 work folder (text,visual, where `run_erasure` finds it).
- The trajectory cache is content-addressed under `cache.root` (trce_ray/stage2/cache.py) and never depends on
  eta/beta/lambda; a relative `cache.root` is made absolute against the sweep's working directory before the
  trials start, so every trial reaches the same folder wherever Tune runs it (Tune changes a trial's directory).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .config import TRCEConfig
from .config.base import validate

SHARED_DIR = "shared"


def with_shared_cache(cfg: TRCEConfig) -> TRCEConfig:
    """`cfg` with `cache.root` absolute (relative to this process's working directory, as `trce-ray train` uses)."""
    root = Path(cfg.cache.root).expanduser()
    if root.is_absolute():
        return cfg
    data = cfg.model_dump(mode="json")
    data["cache"]["root"] = str(root.resolve())
    return validate(TRCEConfig, data)


def stage1_key(cfg: TRCEConfig) -> str:
    """What a stage-1 result depends on: the model and the stage-1 settings."""
    data = cfg.model_dump(mode="json")
    text = json.dumps({"model": data["model"], "stage1": data["stage1"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shared_stage1(cfg: TRCEConfig, sweep_root: Path) -> Path:
    """The sweep's stage-1 result for `cfg`'s model and stage-1 settings, computed by the first trial that needs it."""
    from .locks import hold
    from .stage1.run import run_stage1
    from .workflow import _stage1_matches

    folder = sweep_root / SHARED_DIR / f"stage1-{stage1_key(cfg)}"
    with hold(folder, what="shared stage-1 result", wait=True):
        if not _stage1_matches(folder, cfg):
            run_stage1(cfg, folder, overwrite=True, progress=False)
    return folder


def place_stage1(cfg: TRCEConfig, sweep_root: Path, erase_dir: Path, stages: tuple[str, ...]) -> bool:
    """Put the shared stage-1 result where `run_erasure` looks for it; False when `stages` has no stage 1."""
    if "text" not in stages:
        return False
    from .stage2.run import work_dir

    source = shared_stage1(cfg, sweep_root)
    target = erase_dir if stages == ("text",) else work_dir(erase_dir) / "stage1"
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    partial.rename(target)  # whole or absent: a killed copy never looks like a stage-1 result
    return True
