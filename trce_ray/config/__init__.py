"""One typed, validated config for every command: YAML under jobs/configs/, overridable from the command line.

Every bad value raises `ConfigError` with one sentence naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from ..errors import ConfigError
from .base import Section, validate
from .evaluation import EvalConfig
from .model import ModelConfig
from .stage1 import Stage1Config
from .stage2 import CacheConfig, TrainConfig
from .sweep import SweepConfig
from .tracking import TrackingConfig


class TRCEConfig(Section):
    model: ModelConfig
    stage1: Stage1Config | None = None  # needed by erase; other commands may omit it
    cache: CacheConfig = Field(default_factory=CacheConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    seed: int = 0
    output: str | None = None  # output folder of the command
    allow_job_local_paths: bool = False  # inside a Ray job, accept outputs in the job's temporary folder (paths.py)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def set_dotted(data: dict, key: str, value: Any) -> None:
    """data["a"]["b"] = value for key "a.b", creating sections as needed."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{p}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not a {type(data).__name__}")
    return data


def parse_set(item: str) -> tuple[str, Any]:
    """One `--set key.path=value` item; the value is parsed as YAML (so 0.02, true, [eot, key] work)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        return key.strip(), raw


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TRCEConfig:
    """Read `path` (optional), apply dotted `overrides` (None values are skipped), validate everything, and make
    every path absolute from the working directory (config/paths.py: the one path rule)."""
    from .paths import resolve_paths

    data = read_yaml(path) if path else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    return resolve_paths(validate(TRCEConfig, data))


__all__ = [
    "CacheConfig",
    "ConfigError",
    "EvalConfig",
    "ModelConfig",
    "Section",
    "Stage1Config",
    "SweepConfig",
    "TRCEConfig",
    "TrackingConfig",
    "TrainConfig",
    "load_config",
    "parse_set",
]
