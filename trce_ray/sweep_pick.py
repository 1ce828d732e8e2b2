"""`--pick`: one trial chosen from a sweep's rows by a rule, optionally registered in the MLflow model registry.

The rule is a small grammar, parsed here (never evaluated as code); keywords are lower case, metric names are
sweep.csv's column names:

    RULE      := ("min" | "max") METRIC [ "where" CONDITION { "and" CONDITION } ]
    CONDITION := METRIC OP VALUE                    OP: >=  <=  >  <  ==
    VALUE     := NUMBER | "original" [ ("+" | "-" | "*") NUMBER ]

e.g. `min toy/direct where toy/preservation >= original - 0.05`. `original` is the original (unerased) model's value
of the condition's metric: the sweep evaluates the original model once, with the trials' eval settings, into
`<sweep>/original/` (only when a rule uses `original`; its images are the sweep's shared FID_gen reference images).
Comparisons allow 1e-9 (relative) of slack, so "original - 0.05" accepts a trial exactly 0.05 below. Among the
finished trials that meet every condition, the best by the goal metric wins; ties go through `sweep.rank`'s
tie-breakers (the report tables' other metrics), then table order.

The pick goes into sweep.json (`picked`: trial, rule, value, ties; `original`: the original model's metrics), onto
the sweep's MLflow run (tags `trce.picked`, `trce.pick_rule`; metrics `original/...`), and with `sweep.register_as`
the picked trial's erase folder is logged to the trial's own MLflow run (`erased_model/`) and registered as a new
version of that registered model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TRCEError
from .sweep_rule import ORIGINAL_DIR, Condition, Rule, parse_rule


@dataclass
class Picked:
    trial: str
    rule: str
    value: float  # the picked trial's goal metric
    ties: list[str] = field(default_factory=list)  # trials equal to it on the goal and every tie-breaker
    thresholds: dict[str, float] = field(default_factory=dict)  # each condition -> the number it compared with

    def as_json(self) -> dict:
        return {"trial": self.trial, "rule": self.rule, "value": self.value, "ties": self.ties, **self._compared()}

    def _compared(self) -> dict:
        return {"thresholds": self.thresholds} if self.thresholds else {}


def _number(v) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
    return float(v) if ok else None


def _meets(row: dict, c: Condition, original: dict | None) -> bool:
    value = _number(row.get(c.metric))
    return value is not None and c.holds(value, c.threshold(original))


def pick(rows: list[dict], rule: Rule | str, original: dict | None = None) -> Picked:
    """The trial `rule` chooses from sweep rows (as in sweep.json); `original`: the original model's metrics.

    Raises:
        TRCEError: one sentence when the rule names a metric no trial measured, needs an original value that is
            missing, or no finished trial meets its conditions.
    """
    from .sweep_common import rank

    rule = parse_rule(rule) if isinstance(rule, str) else rule
    measured = sorted({k for r in rows for k, v in r.items() if k != "trial" and _number(v) is not None})
    for metric in [rule.metric, *(c.metric for c in rule.conditions)]:
        if metric not in measured:
            more = ", ..." if len(measured) > 8 else ""
            raise TRCEError(
                f"pick rule {rule.text!r} names {metric}, which no trial measured (they have "
                f"{', '.join(measured[:8]) or 'no metrics'}{more})"
            )
    for c in rule.conditions:
        if c.uses_original and _number((original or {}).get(c.metric)) is None:
            raise TRCEError(
                f"pick rule {rule.text!r} compares {c.metric} with the original model's, which its evaluation "
                "did not measure"
            )
    finished = [r for r in rows if not r.get("error") and _number(r.get(rule.metric)) is not None]
    meets = [r for r in finished if all(_meets(r, c, original) for c in rule.conditions)]
    if not meets:
        counts = "; ".join(
            f"{c.metric} {c.op} {c.threshold(original):.4g} holds for {sum(_meets(r, c, original) for r in finished)}"
            for c in rule.conditions
        )
        raise TRCEError(f"no trial meets the pick rule {rule.text!r} ({len(finished)} finished trials; {counts})")
    best, ties, _ = rank(meets, rule.metric, rule.mode)
    thresholds = {f"{c.metric} {c.op}": c.threshold(original) for c in rule.conditions}
    return Picked(best["trial"], rule.text, float(best[rule.metric]), ties if len(ties) > 1 else [], thresholds)


def original_metrics(cfg, out: Path, progress: bool = True) -> dict[str, float]:
    """The original model's metrics under the sweep's eval settings: `<out>/original/metrics.json`, evaluated once
    (its images go to the sweep's shared image cache, where FID_gen's reference images already are)."""
    from .artifacts import write_json
    from .evaluation.runner import run_eval
    from .sweep_common import METRICS_FILE, eval_config

    done = out / ORIGINAL_DIR / METRICS_FILE
    if done.is_file():
        return json.loads(done.read_text())
    print(f"sweep: evaluating the original model {cfg.model.path} once (the pick rule compares with it)")
    ecfg = eval_config(cfg, cfg.model.path, out / "images")
    result = run_eval(ecfg, out / ORIGINAL_DIR / "eval", overwrite=True, progress=progress)
    metrics = {k: v for k, v in result.metrics.items() if _number(v) is not None}
    write_json(done, metrics)
    return metrics


def _trial_run_id(client, parent_run_id: str, trial: str) -> str:
    """The picked trial's MLflow run: the latest child run of the sweep's run with its name."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`trce.trial` = '{trial}'",
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise TRCEError(f"the sweep's MLflow run {parent_run_id} has no child run for trial {trial} to register from")
    return runs[0].info.run_id


def register_pick(cfg, out: Path, trial: str, parent_run_id: str, rule: str) -> dict:
    """Log the picked trial's erase folder to its own MLflow run and register it as a new version of
    `sweep.register_as`; returns {"name", "version", "run_id"}."""
    from mlflow import MlflowClient

    from .config import TRCEConfig, load_config
    from .config.base import validate
    from .tracking import Tracker, log_erase_output, resolve_tracking_uri

    erase = out / "trials" / trial / "erase"
    uri = resolve_tracking_uri(cfg.tracking.uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = _trial_run_id(client, parent_run_id, trial)
    data = load_config(erase / "config.yaml").model_dump(mode="json") if (erase / "config.yaml").is_file() else None
    data = data or cfg.model_dump(mode="json")
    data["tracking"] = {
        **cfg.tracking.model_dump(mode="json"),
        "register_as": cfg.sweep.register_as,
        "log_deltas": True,
    }
    trial_cfg = validate(TRCEConfig, data)
    version = log_erase_output(Tracker(client, run_id, uri), trial_cfg, erase)
    client.set_model_version_tag(cfg.sweep.register_as, version, "trce.pick_rule", rule)
    client.set_model_version_tag(cfg.sweep.register_as, version, "trce.sweep", out.name)
    return {"name": cfg.sweep.register_as, "version": version, "run_id": run_id}


def apply_pick(cfg, out: Path, rows: list[dict], parent_run_id: str | None, progress: bool = True) -> dict:
    """Pick by `sweep.pick`, register by `sweep.register_as`, and record both in sweep.json and on the sweep's run."""
    from .artifacts import write_json
    from .tracking import resolve_tracking_uri

    rule = parse_rule(cfg.sweep.pick)
    original = original_metrics(cfg, out, progress) if rule.needs_original else None
    try:
        entry = pick(rows, rule, original).as_json()
    except TRCEError as err:
        raise TRCEError(f"{err}; the sweep's results are in {out / 'sweep.csv'}") from None
    tracked = cfg.tracking.enabled and parent_run_id
    if cfg.sweep.register_as:
        if not tracked:
            raise TRCEError(f"sweep.register_as needs the sweep's MLflow run, and {out} was swept without tracking")
        entry["registered"] = register_pick(cfg, out, entry["trial"], parent_run_id, rule.text)
    summary_file = out / "sweep.json"
    summary = json.loads(summary_file.read_text())
    summary["picked"] = entry
    if original is not None:
        summary["original"] = original
    write_json(summary_file, summary)
    if tracked:
        from mlflow import MlflowClient

        from .tracking import Tracker

        uri = resolve_tracking_uri(cfg.tracking.uri)
        parent = Tracker(MlflowClient(tracking_uri=uri), parent_run_id, uri)
        tags = {"trce.picked": entry["trial"], "trce.pick_rule": rule.text}
        if "registered" in entry:
            tags["trce.registered"] = f"{entry['registered']['name']}/{entry['registered']['version']}"
        parent.set_tags(tags)
        parent.log_metrics({f"original/{k}": v for k, v in (original or {}).items()})
        parent.log_artifact(summary_file)
    return entry
