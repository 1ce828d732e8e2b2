"""MLflow tracking for every trce-ray command: one run per command, opened and always ended by `track`.

    from trce_ray.tracking import track

    with track(cfg, "train") as run:            # params: the resolved config, flattened
        ...
        run.log_metrics({"loss": 0.1}, step=3)
        run.log_artifact("runs/x/stage2.safetensors")
    # the run ends FINISHED, or FAILED (with the error as a tag) when the block raises

`track` yields a no-op tracker when tracking is off (`tracking.enabled: false`) or in a non-primary process (a Ray
Train worker of rank > 0, or RANK != 0), so callers never branch. The URI is `tracking.uri`, else
`MLFLOW_TRACKING_URI`, else `sqlite:///<working directory>/mlflow.db`; artifacts of a sqlite store go to
`mlartifacts/` beside the database file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import TRCEError

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The URI a run logs to. A bare path ending in .db becomes a sqlite URI; file stores are refused."""
    u = uri or os.environ.get("MLFLOW_TRACKING_URI") or str(Path.cwd() / "mlflow.db")
    if "://" not in u and not u.startswith(("databricks", "file:")):
        if u.endswith(".db"):
            return "sqlite:///" + str(Path(u).expanduser().resolve())
        raise TRCEError(
            f"tracking URI {u!r} is a folder path; MLflow 3 refuses file stores: use sqlite:///path/mlflow.db "
            "or http://host:port"
        )
    if u.startswith("file:"):
        raise TRCEError(f"tracking URI {u!r} is a file store, which MLflow 3 refuses: use sqlite:///path/mlflow.db")
    if u.startswith("sqlite:///") and not u.startswith("sqlite:////"):
        # Relative sqlite paths would follow the process's working directory (Ray workers have another one).
        return "sqlite:///" + str(Path(u[len("sqlite:///") :]).expanduser().resolve())
    return u


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None  # a tracking server decides


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists and None as JSON text."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    text = data if isinstance(data, str) else json.dumps(data)
    out[prefix[:-1]] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


def is_primary_process() -> bool:
    """False in a worker of rank > 0 (torchrun/DeepSpeed RANK, or a Ray Train worker); logging happens on rank 0."""
    if os.environ.get("RANK", "0") != "0":
        return False
    if "ray.train" in sys.modules:
        try:
            import ray.train

            return ray.train.get_context().get_world_rank() == 0
        except Exception:  # noqa: BLE001 - not inside a Ray Train worker
            return True
    return True


def _quiet_mlflow() -> None:
    for name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration", "mlflow.tracking._tracking_service"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """One open MLflow run. Methods mirror mlflow's, with explicit run ids (no global active-run state)."""

    def __init__(self, client=None, run_id: str | None = None, uri: str | None = None):
        self.client, self.run_id, self.uri = client, run_id, uri

    @property
    def active(self) -> bool:
        return self.client is not None

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.active or not params:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        """Numbers only; None and NaN are left out (a missing value is not a zero)."""
        if not self.active:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        if self.active:
            self.client.log_dict(self.run_id, data, artifact_file)

    def log_image(self, image, artifact_file: str) -> None:
        """A PIL image as a PNG artifact."""
        if not self.active:
            return
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(artifact_file).name
            image.save(target, format="PNG")
            parent = str(Path(artifact_file).parent)
            self.log_artifact(target, None if parent == "." else parent)

    def artifact_uri(self, artifact_path: str = "") -> str | None:
        if not self.active:
            return None
        base = self.client.get_run(self.run_id).info.artifact_uri
        return f"{base}/{artifact_path}" if artifact_path else base

    def register_model(
        self, name: str, artifact_path: str, tags: dict[str, Any] | None = None, description: str | None = None
    ) -> str | None:
        """Register the run's `artifact_path` as a new version of registered model `name`; returns the version."""
        if not self.active:
            return None
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description="TRCE-erased diffusion model (trce-ray)")
        except MlflowException as err:
            if getattr(err, "error_code", "") != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(err):
                raise
        version = self.client.create_model_version(
            name,
            source=self.artifact_uri(artifact_path),
            run_id=self.run_id,
            tags={k: str(v) for k, v in (tags or {}).items()},
            description=description,
            await_creation_for=0,
        )
        return str(version.version)


NULL_TRACKER = Tracker()


def _experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=_artifact_root(uri))
    except MlflowException:
        # Concurrent jobs against a fresh server race to create the same experiment; the loser gets
        # RESOURCE_ALREADY_EXISTS (or a unique-constraint error from a SQL store) and uses the winner's.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextmanager
def track(
    cfg,
    command: str,
    run_name: str | None = None,
    tags: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
    params: dict | None = None,
) -> Iterator[Tracker]:
    """Open an MLflow run for `command` with `cfg` (a TRCEConfig) as params; end it FINISHED, FAILED or KILLED.

    Args:
        cfg: the resolved config; its `tracking` section says where and whether to log.
        command: "erase", "eval", "train", ... (tag `trce.command`, used by `trce-ray report`).
        run_name: default `tracking.run_name`, else "<command> <output folder name>".
        parent_run_id: nest this run under another (e.g. a sweep's trial).
        params: extra params beside the config.
    """
    tcfg = cfg.tracking
    if not tcfg.enabled or not is_primary_process():
        yield NULL_TRACKER
        return
    _quiet_mlflow()
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tcfg.uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        exp_id = _experiment_id(client, tcfg.experiment, uri)
        name = run_name or tcfg.run_name or (f"{command} {Path(cfg.output).name}" if cfg.output else command)
        run_tags = {
            "trce.command": command,
            "mlflow.source.name": f"trce-ray {command}",
            "mlflow.source.type": "LOCAL",
            **{k: str(v) for k, v in (tags or {}).items()},
        }
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, run_name=name, tags=run_tags)
    except Exception as err:  # noqa: BLE001 - any backend failure is one user-facing sentence
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TRCEError(
            f"MLflow tracking at {uri} failed: {first} (set --tracking-uri, or tracking.enabled: false)"
        ) from None
    tracker = Tracker(client, run.info.run_id, uri)
    try:
        tracker.log_params({**cfg.model_dump(mode="json"), **(params or {})})
        yield tracker
    except BaseException as err:
        # Ctrl-C / SIGTERM (interrupts.Interrupted is a KeyboardInterrupt) is a user's stop, not a failure
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            tracker.set_tags({"trce.error": f"{type(err).__name__}: {err}"[:5000]})
        finally:
            client.set_terminated(run.info.run_id, status)
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def lineage(cfg, erase_dir: str | Path) -> dict[str, str]:
    """What an erased model was made from: base model, concept pack or prompt files, eta/beta/lambda, stages."""
    from .config.stage2 import ABLATIONS
    from .models.erased import ARTIFACT_ORDER

    folder = Path(erase_dir)
    stages = [n.split(".")[0] for n in ARTIFACT_ORDER if (folder / n).is_file()]
    out = {"trce.base_model": cfg.model.path, "trce.stages": "+".join(stages) or "none"}
    s1 = cfg.stage1
    if s1 is not None:
        out["trce.concept"] = s1.concept_label
        out["trce.eta"] = str(s1.eta)
        out["trce.tokens"] = ",".join(s1.tokens) if s1.tokens else "family default"
    if "stage2" in stages:
        out["trce.beta"] = str(cfg.train.beta)
        out["trce.lambda"] = str(cfg.train.lam)
        off = [k for k in ABLATIONS if not getattr(cfg.train, k)]
        if off:  # a Table 5 ablation: which stage-2 components were switched off
            out["trce.stage2_off"] = ",".join(off)
    return out


def log_erase_output(
    tracker: Tracker, cfg, erase_dir: str | Path, metrics: dict[str, float] | None = None
) -> str | None:
    """Log an erase output folder (deltas, config, prompt lists, summaries) and register it when asked.

    Returns the registered model version, if `tracking.register_as` is set.
    """
    if not tracker.active:
        return None
    folder = Path(erase_dir)
    tracker.log_metrics(metrics or {})
    tags = lineage(cfg, folder)
    tracker.set_tags(tags)
    small = [f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix in (".yaml", ".json", ".txt", ".md")]
    deltas = [f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix == ".safetensors"]
    for f in small:
        tracker.log_artifact(f, "erased_model")
    if cfg.tracking.log_deltas:
        for f in deltas:
            tracker.log_artifact(f, "erased_model")
    if cfg.tracking.register_as:
        if not cfg.tracking.log_deltas:
            raise TRCEError("tracking.register_as needs tracking.log_deltas: the registry points at logged deltas")
        return tracker.register_model(
            cfg.tracking.register_as,
            "erased_model",
            tags,
            description=f"{tags.get('trce.concept', '')} erased from {cfg.model.path}",
        )
    return None
