"""MLflow while a sweep runs: the sweep's run opens before the first trial, each trial opens its own child run when
it starts (in the trial's process, wherever Tune runs it) and ends it FINISHED or FAILED with the error; the parent
gets the table, the plots, the best value per objective and the Pareto front when the trials are done.

    sweep <name>                      params: the sweep config; metrics: best/<metric>, pareto/size; artifacts
      ├─ t00-eta=0.05  (FINISHED)     params: the trial's config; metrics: eval metrics, stage-2 loss curve;
      └─ t01-eta=2     (FAILED)       artifacts: eval grids/, results/, metrics.json, report.md; tag trce.error
"""

from __future__ import annotations

from pathlib import Path

from .config import TRCEConfig
from .config.base import validate


def with_resolved_tracking(cfg: TRCEConfig) -> TRCEConfig:
    """`cfg` with `tracking.uri` fixed to what the sweep's process resolves, so every trial logs to the same store
    (a trial runs in another working directory, without the driver's environment)."""
    if not cfg.tracking.enabled:
        return cfg
    from .tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking.uri)
    if uri == cfg.tracking.uri:
        return cfg
    data = cfg.model_dump(mode="json")
    data["tracking"]["uri"] = uri
    return validate(TRCEConfig, data)


def trial_run(cfg: TRCEConfig, name: str, sweep_name: str, parent_run_id: str | None):
    """The trial's child run (a context manager: FINISHED on success, FAILED with the error when the block raises)."""
    from .tracking import track

    return track(
        cfg,
        "sweep-trial",
        run_name=name,
        parent_run_id=parent_run_id,
        tags={"trce.sweep": sweep_name, "trce.trial": name},
    )


def log_trial_outputs(run, cfg: TRCEConfig, folder: Path, metrics: dict) -> None:
    """What a finished trial adds to its run: its metrics, the erased model's lineage and stage-2 loss curve."""
    from .stage2.run import METRICS_FILE as STAGE2_METRICS
    from .stage2.run import log_training_curve
    from .tracking import lineage

    erase = folder / "erase"
    if erase.is_dir():
        run.set_tags(lineage(cfg, erase))
        if (erase / STAGE2_METRICS).is_file() and (erase / "stage2.safetensors").is_file():
            log_training_curve(run, erase)
    run.log_metrics(metrics)


def log_parent(parent, rows: list[dict], summary: dict, out: Path) -> None:
    """The sweep's run: best value per objective, the front's size and members, the table and plots."""
    metrics = {f"best/{goal}": best["value"] for goal, best in summary.get("best_by_objective", {}).items()}
    if "pareto" in summary:
        metrics["pareto/size"] = len(summary["pareto"])
        parent.set_tags({"trce.pareto": ",".join(summary["pareto"])[:5000]})
    metrics["trials/failed"] = sum(1 for r in rows if r.get("error"))
    parent.log_metrics({k.replace(":", "."): v for k, v in metrics.items()})
    for name in ("sweep.csv", "sweep.md", "sweep.png", "pareto.png", "sweep.json"):
        if (out / name).is_file():
            parent.log_artifact(out / name)
