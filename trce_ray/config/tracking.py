"""MLflow tracking settings."""

from __future__ import annotations

from .base import Section


class TrackingConfig(Section):
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "trce-ray"
    enabled: bool = True
    run_name: str | None = None  # default: "<command> <output folder name>"
    register_as: str | None = None  # register the erased model under this registry name (erase/train)
    log_deltas: bool = True  # upload the safetensors deltas as run artifacts
