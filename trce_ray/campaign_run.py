"""Running a campaign (trce_ray/campaign.py holds the plan): one Ray task per erasure, one MLflow run each under the
campaign's run, and the summary table.

    campaign <DIR>                     params: the campaign's settings; metrics: erasures/finished, failed, kept;
      ├─ red        (FINISHED)         artifacts: campaign.csv, campaign.md
      ├─ red-green  (FINISHED)         each erasure: its config, eval metrics, lineage tags (as a sweep trial's)
      └─ bad        (FAILED)           tag trce.error

Each task gets one `ErasureTask` (its resolved config, the campaign folder, the parent run's id) and runs the sweep's
trial folder (`sweep.run_trial_folder`: `run_erasure`, then `run_eval`, then `metrics.json` written atomically,
the completion marker) into `DIR/<name>/`, in place: stage 1 inside the task, on the node Ray chose for the task's
resources (`stage1.num_gpus` / `stage1.num_cpus`). Erasures start while their peak need (task slot plus their largest
phase of Ray actors, `sweep_resources.trial_peak`) fits beside the running ones, so a task never holds its slot while
waiting forever for its evaluation's actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .campaign import SUMMARY_STEM, Erasure
from .config import TRCEConfig
from .errors import ConfigError, TRCEError


@dataclass(frozen=True)
class ErasureTask:
    """Everything one erasure's Ray task needs (no module globals)."""

    erasure: Erasure
    root: str  # the campaign folder: the erasure writes root/<name>/ and shares root/images, root/shared
    campaign: str  # the campaign's name (MLflow tag trce.campaign)
    parent_run_id: str | None  # the campaign's MLflow run


@dataclass
class CampaignResult:
    output: Path
    rows: list[dict]  # one per erasure, in the file's order: name, concepts, stages, status, metrics, error


def slot(cfg: TRCEConfig) -> dict[str, float]:
    """What an erasure's task holds for its whole life: its stage-1 resources (stage 1 runs inside the task)."""
    s1 = cfg.stage1
    return {"CPU": s1.num_cpus, "GPU": s1.num_gpus} if s1 is not None else {"CPU": 1.0, "GPU": 0.0}


def run_erasure_task(task: ErasureTask) -> dict:
    """Ray task: erase and evaluate one entry into `root/<name>/`, inside its own MLflow run (FAILED on error)."""
    import torch

    from .quiet import quiet_libraries
    from .sweep import Trial, run_trial_folder
    from .sweep_tracking import log_trial_outputs
    from .tracking import track

    quiet_libraries()
    e = task.erasure
    torch.set_num_threads(max(1, int(slot(e.cfg)["CPU"])))
    root = Path(task.root)
    tags = {"trce.campaign": task.campaign, "trce.erasure": e.name}
    with track(e.cfg, "campaign-erasure", run_name=e.name, parent_run_id=task.parent_run_id, tags=tags) as run:
        metrics = run_trial_folder(Trial(e.name, {}, e.cfg), root, e.stages, run, shared=root)
        log_trial_outputs(run, e.cfg, root / e.name, metrics)
    return metrics


def peaks(erasures: list[Erasure], cluster: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each erasure's peak need; one that exceeds the whole cluster is refused, naming it."""
    from .sweep_resources import trial_peak

    out = {}
    for e in erasures:
        peak = out[e.name] = trial_peak(e.cfg, e.stages, cluster.get("GPU", 0.0), slot(e.cfg))
        for kind, need in peak.items():
            if need > cluster.get(kind, 0.0) + 1e-9:
                raise ConfigError(
                    f"campaign entry '{e.name}' needs {need:g} {kind} at its peak (its task's stage1.num_"
                    f"{kind.lower()}s plus its largest phase of actors) but the cluster has {cluster.get(kind, 0.0):g}"
                )
    return out


def _fits(used: dict[str, float], need: dict[str, float], cluster: dict[str, float]) -> bool:
    return all(used.get(k, 0.0) + v <= cluster.get(k, 0.0) + 1e-9 for k, v in need.items())


def run_tasks(
    todo: list[Erasure], root: Path, parent_run_id: str | None, max_concurrent: int | None, bar
) -> dict[str, str]:
    """Run `todo` as Ray tasks, as many at once as fit; returns {name: error sentence} of the failed ones."""
    from .ray_runtime import ensure_ray
    from .sweep import error_sentence, ray_resources

    ray = ensure_ray()
    remote = ray.remote(max_retries=0)(run_erasure_task)
    cluster = ray_resources()
    need = peaks(todo, cluster)
    pending, running, errors = list(todo), {}, {}
    while pending or running:
        used = {k: sum(need[e.name][k] for e in running.values()) for k in ("CPU", "GPU")}
        while pending and len(running) < (max_concurrent or len(todo)):
            e = pending[0]
            if running and not _fits(used, need[e.name], cluster):
                break
            s = slot(e.cfg)
            task = ErasureTask(e, str(root), root.name, parent_run_id)
            ref = remote.options(num_cpus=s["CPU"], num_gpus=s["GPU"], name=f"campaign {e.name}").remote(task)
            running[ref] = pending.pop(0)
            used = {k: used[k] + need[e.name][k] for k in used}
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            e = running.pop(ref)
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001 - a failed erasure is reported; the others go on
                errors[e.name] = error_sentence(err)[:500]
            bar.update(1)
    return errors


def concepts_text(cfg: TRCEConfig) -> str:
    """The erased concepts in a table cell: pack names, names files by file name."""
    if cfg.stage1 is None:
        return ""
    entries = cfg.stage1.concept_entries()
    if not entries:
        return cfg.stage1.concept_label
    names = [e if isinstance(e, str) else e.names for e in entries]
    return " + ".join(Path(n).name if "/" in n else n for n in names)


def summary_rows(erasures: list[Erasure], root: Path, kept: set[str], errors: dict[str, str]) -> list[dict]:
    import json

    from .sweep import METRICS_FILE

    rows = []
    for e in erasures:
        done = root / e.name / METRICS_FILE
        metrics = json.loads(done.read_text()) if done.is_file() else {}
        status = "kept" if e.name in kept else "finished" if metrics else "failed"
        error = "" if metrics else errors.get(e.name, "not run")
        row = {"erasure": e.name, "concepts": concepts_text(e.cfg), "stages": ",".join(e.stages), "status": status}
        rows.append({**row, **metrics, "error": error})
    return rows


def end_lost_runs(parent, errors: dict[str, str]) -> list[str]:
    """End FAILED the runs of failed erasures still RUNNING (a task whose worker died never ended its own run);
    returns their erasure names."""
    if not parent.active or not errors:
        return []
    client = parent.client
    experiment = client.get_run(parent.run_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent.run_id}' and attributes.status = 'RUNNING'"
    ended = []
    for run in client.search_runs([experiment], query):
        name = run.data.tags.get("trce.erasure")
        if name in errors:
            client.set_tag(run.info.run_id, "trce.error", errors[name])
            client.set_terminated(run.info.run_id, "FAILED")
            ended.append(name)
    return ended


def log_campaign(parent, rows: list[dict], out: Path) -> None:
    statuses = [r["status"] for r in rows]
    parent.log_metrics({f"erasures/{s}": statuses.count(s) for s in ("finished", "failed", "kept")})
    for name in (f"{SUMMARY_STEM}.csv", f"{SUMMARY_STEM}.md"):
        parent.log_artifact(out / name)


def run_campaign(cfg, resume: bool = False, overwrite: bool = False, progress: bool = True) -> CampaignResult:
    """Plan the campaign `cfg` (its own settings: file, output, max_concurrent, tracking), check everything, then
    run the erasures not finished in `cfg.output` under the campaign's MLflow run and write campaign.csv/md.

    Raises:
        TRCEError: bad input (before anything is written), or every erasure failed (the campaign's run ends FAILED).
    """
    from tqdm.auto import tqdm

    from .campaign import check_campaign_output, plan_campaign, prepare_campaign_output
    from .ray_runtime import ensure_ray
    from .sweep import ray_resources, write_table
    from .tracking import track

    out = Path(cfg.output)
    store = {"tracking.uri": cfg.tracking.uri, "tracking.experiment": cfg.tracking.experiment}
    erasures = plan_campaign(cfg.file, out, {**store, "tracking.enabled": cfg.tracking.enabled})
    kept = check_campaign_output(out, erasures, resume, overwrite)
    todo = [e for e in erasures if e.name not in kept]
    if todo:
        ensure_ray()
        peaks(todo, ray_resources())  # an erasure the cluster cannot hold fails here, before anything is written
    prepare_campaign_output(out, erasures, resume, overwrite)
    bar = tqdm(total=len(erasures), initial=len(kept), desc="campaign", unit="erasure", disable=not progress)
    with track(cfg, "campaign", run_name=f"campaign {out.name}", tags={"trce.campaign": out.name}) as parent, bar:
        errors = run_tasks(todo, out, parent.run_id, cfg.max_concurrent, bar) if todo else {}
        end_lost_runs(parent, errors)
        rows = summary_rows(erasures, out, kept, errors)
        write_table(rows, out, SUMMARY_STEM)
        log_campaign(parent, rows, out)
        if all(r["status"] == "failed" for r in rows):
            raise TRCEError(
                f"every erasure of the campaign failed; first error: {rows[0]['error']} (see {out}/campaign.csv)"
            )
    return CampaignResult(out, rows)
