"""The one rule for paths: every path in a config or flag is made absolute once, where the command is issued.

`resolve_paths` runs in the process that reads the config (the CLI, a job's driver), before anything is shipped to
Ray tasks, trials or workers, whose working directories differ (a Ray worker runs in its own folder; a job's driver
in the temporary copy of `--working-dir`). Relative paths are taken from the working directory of the command; the
MLflow store defaults to `MLFLOW_TRACKING_URI`, else `sqlite:///<working directory>/mlflow.db`.

Inside a Ray job whose working directory is the job's temporary folder (`.../runtime_resources/working_dir_files/
_ray_pkg_*`), a path the command writes (output, cache, checkpoints, images, the MLflow database) that would land in
that folder is refused with one sentence: the folder is deleted with the job and no other node sees it. Setting
`allow_job_local_paths: true` (`--allow-job-local-paths`) accepts it. Inputs shipped with `--working-dir` (prompt
files, concept packs) are read from there and are fine.

See docs/cluster.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# Fields that always hold a local path (None = unset).
WRITTEN_FIELDS = ("output", "cache.root", "train.storage", "eval.image_dir")
READ_FIELDS = (
    "stage1.erase_prompts",
    "stage1.target_prompts",
    "stage1.preserve_prompts",
    "stage1.retain",
    "eval.data_dir",
    "eval.celebrity_erase",
    "eval.celebrity_retain",
    "eval.q16_embeddings",
    "eval.fid_weights",
    "eval.fid_real_images",
)
LIST_FIELDS = ("eval.deltas",)  # lists of paths
MAP_FIELDS = ("eval.prompt_files",)  # name -> path
CONCEPT_LIST_FIELDS = ("stage1.concepts",)  # packs or names files, or {names: <file>, family, anchor} items
# Fields that hold a path, or a name that is not one (a hub id, a built-in pack, "toy", "inception"): resolved only
# when the value looks like a path (/, ./, ../, ~) or names something that exists here.
MAYBE_PATH_FIELDS = (
    "model.path",
    "stage1.concept",
    "eval.reference_model",
    "eval.q16_clip",
    "eval.clip_model",
    "eval.fid_features",
)
PATH_FIELDS = WRITTEN_FIELDS + READ_FIELDS + LIST_FIELDS + MAP_FIELDS + CONCEPT_LIST_FIELDS + MAYBE_PATH_FIELDS
JOB_DIR_MARKER = ("runtime_resources", "working_dir_files")
DEFAULT_TRACKING_DB = "mlflow.db"


def absolute(path: str | Path, base: str | Path | None = None) -> str:
    """`path` as an absolute, normalised path (`~` expanded), relative ones taken from `base` (default: cwd)."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base or os.getcwd()) / p
    return os.path.normpath(str(p))


def _looks_like_path(value: str, base: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or (Path(base) / Path(value).expanduser()).exists()


def _get(data: dict, key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _set(data: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value


def _resolve_value(key: str, value: Any, base: str) -> Any:
    if value is None:
        return None
    if key in LIST_FIELDS:
        return [absolute(v, base) for v in value]
    if key in MAP_FIELDS:
        return {name: absolute(v, base) for name, v in value.items()}
    if key in CONCEPT_LIST_FIELDS:
        one = "stage1.concept"  # each item: a pack name or a names file
        return [
            {**v, "names": absolute(v["names"], base)} if isinstance(v, dict) else _resolve_value(one, v, base)
            for v in value
        ]
    if key in MAYBE_PATH_FIELDS:
        return absolute(value, base) if isinstance(value, str) and _looks_like_path(value, base) else value
    return absolute(value, base) if isinstance(value, str) else value


def tracking_uri(uri: str | None, base: str | None = None) -> str:
    """The absolute MLflow URI of a run: `uri`, else $MLFLOW_TRACKING_URI, else sqlite:///<base>/mlflow.db."""
    from ..tracking import resolve_tracking_uri

    base = base or os.getcwd()
    given = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_TRACKING_DB}"
    if given.startswith("sqlite:///") and not given.startswith("sqlite:////"):
        given = "sqlite:///" + absolute(given[len("sqlite:///") :], base)
    elif "://" not in given and given.endswith(".db"):
        given = absolute(given, base)
    return resolve_tracking_uri(given)


def resolve_data(data: dict, base: str | None = None) -> dict:
    """The same config data (a TRCEConfig dump) with every path field absolute, swept path values included."""
    base = base or os.getcwd()
    for key in PATH_FIELDS:
        value = _get(data, key)
        if value is not None:
            _set(data, key, _resolve_value(key, value, base))
    grid = _get(data, "sweep.grid") or {}
    for key, values in grid.items():
        if key in PATH_FIELDS:
            grid[key] = [_resolve_value(key, v, base) for v in values]
    tracking = data.get("tracking") or {}
    if tracking.get("enabled", True) or tracking.get("uri"):
        tracking["uri"] = tracking_uri(tracking.get("uri"), base)
    return data


def resolve_paths(cfg, base: str | None = None):
    """`cfg` (a TRCEConfig) with every path absolute; validated again, so a missing prompt file still fails here."""
    from .base import validate

    return validate(type(cfg), resolve_data(cfg.model_dump(mode="json"), base))


def job_folder(cwd: str | Path | None = None) -> Path | None:
    """The Ray job's temporary working-dir copy this process runs in (`.../working_dir_files/_ray_pkg_*`), if any."""
    parts = Path(cwd or os.getcwd()).resolve().parts
    for i in range(len(parts) - 2):
        if parts[i : i + 2] == JOB_DIR_MARKER:
            return Path(*parts[: i + 3])
    return None


def inside_job_folder(path: str | Path) -> bool:
    """Whether `path` lies in some Ray job's temporary working-dir copy, whatever this process's working directory
    (a Tune trial runs in its own trial folder, not in the job's)."""
    return job_folder(Path(path).expanduser().resolve()) is not None


def written_paths(cfg, fields: tuple[str, ...] = WRITTEN_FIELDS) -> dict[str, str]:
    """{field: path} of what the command writes: `fields` that are set, and the MLflow sqlite database."""
    data = cfg.model_dump(mode="json")
    out = {key: _get(data, key) for key in fields if _get(data, key)}
    uri = data.get("tracking", {}).get("uri") or ""
    if data.get("tracking", {}).get("enabled") and uri.startswith("sqlite:///"):
        out["tracking.uri"] = uri[len("sqlite:///") :]
    return out


def check_job_paths(paths: dict[str, str], allowed: bool = False, cwd: str | Path | None = None) -> None:
    """Refuse (one sentence) a written path inside the Ray job's temporary folder, unless `allowed`."""
    folder = job_folder(cwd)
    if folder is None or allowed:
        return
    for key, path in paths.items():
        p = Path(os.path.realpath(path))
        if p == folder or folder in p.parents:
            raise ConfigError(
                f"{key} {path} is inside this Ray job's temporary folder {folder}, which is deleted with the job and "
                "seen by no other node: give a path on storage every node mounts (e.g. /mnt/shared/...; for the "
                "MLflow store set MLFLOW_TRACKING_URI), or pass --allow-job-local-paths (docs/cluster.md)"
            )
