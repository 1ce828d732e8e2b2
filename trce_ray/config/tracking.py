"""MLflow tracking settings."""

from __future__ import annotations

from .base import Section


class TrackingConfig(Section):
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "trce-ray"
    enabled: bool = True
