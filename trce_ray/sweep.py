"""`trce-ray sweep`: erase and evaluate every point of a grid over TRCE's knobs, one Ray Tune trial per point.

    config -> grid points (each a full TRCEConfig, validated before anything runs)
           -> Tune trials: erase (stage 1, or both stages) -> `run_eval` -> metrics.json
           -> sweep.csv / sweep.md / sweep.png, and one nested MLflow run per trial under the sweep's run

A trial's folder is complete when its `metrics.json` exists; a rerun with `--resume` keeps those and runs the rest,
so a killed sweep resumes at trial granularity. Evaluation images share one cache per sweep, so the original
model's images (FID_gen's reference) are generated once, not once per trial.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import shutil
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import atomic_file, write_json
from .config import TRCEConfig, set_dotted
from .config.base import validate
from .errors import ConfigError, TRCEError
from .sweep_common import METRICS_FILE, eval_config, rank

TRIALS_DIR = "trials"


@dataclass(frozen=True)
class Trial:
    name: str  # folder name: index plus the swept values, e.g. "t01-eta=0.1"
    params: dict  # the swept fields of this point
    cfg: TRCEConfig  # the full, validated config of this point (model, stages, eval)


def _slug(params: dict) -> str:
    def text(value):
        return f"{value:.4g}" if isinstance(value, float) and len(repr(value)) > 8 else value  # drawn floats

    parts = [f"{key.rsplit('.', 1)[-1]}={text(value)}" for key, value in params.items()]
    return re.sub(r"[^A-Za-z0-9=.,_+-]+", "-", ",".join(parts))[:80]


def grid_trials(cfg: TRCEConfig) -> list[Trial]:
    """Every `sweep.points` entry crossed with every combination of `sweep.grid`, each applied to `cfg` and
    validated; a bad key or value fails here."""
    grid, points = cfg.sweep.grid, cfg.sweep.points or [{}]
    if not (grid or cfg.sweep.points):
        raise ConfigError("sweep.grid is empty: give at least one --grid FIELD=V1,V2 (e.g. stage1.eta=0.01,0.1)")
    base = cfg.model_dump(mode="json")
    trials = []
    combos = [{**point, **dict(zip(grid, values))} for point in points for values in itertools.product(*grid.values())]
    for i, params in enumerate(combos):
        data = deepcopy(base)
        for key, value in params.items():
            set_dotted(data, key, value)
        try:
            point = validate(TRCEConfig, data)
        except ConfigError as err:
            raise ConfigError(f"sweep grid point {params}: {err}") from None
        trials.append(Trial(f"t{i:02d}-{_slug(params)}", params, point))
    return trials


def random_trials(cfg: TRCEConfig) -> list[Trial]:
    """`sweep.num_samples` seeded draws from `sweep.space` (see trce_ray.sweep_search), each validated."""
    from .sweep_search import point_config, random_points

    base = cfg.model_dump(mode="json")
    return [Trial(f"t{i:02d}-{_slug(p)}", p, point_config(base, p)) for i, p in enumerate(random_points(cfg))]


def plan_trials(cfg: TRCEConfig) -> list[Trial]:
    """The trials known before anything runs: every grid point, or the random draws; [] for optuna (asked live)."""
    if cfg.sweep.search == "grid":
        if cfg.sweep.space:
            raise ConfigError("sweep.space needs sweep.search random or optuna (grid runs sweep.grid's lists)")
        return grid_trials(cfg)
    if cfg.sweep.points:
        raise ConfigError("sweep.points needs sweep.search grid (random and optuna draw their points from the space)")
    if cfg.sweep.search == "random":
        return random_trials(cfg)
    from .sweep_search import check_space, optuna_search

    optuna_search(cfg, check_space(cfg))  # the space, the objectives and the optuna package, checked up front
    return []


def check_eval_sets(cfg: TRCEConfig) -> None:
    """Read every prompt set the trials will evaluate, so a bad set name or file fails before any trial runs."""
    from .evaluation.prompts import load_prompt_set, resolve_set_names

    if not (cfg.eval.suite or cfg.eval.sets):
        raise ConfigError("the sweep evaluates every trial: set eval.suite or eval.sets (e.g. --suite toy)")
    for name, _ in resolve_set_names(cfg.eval.suite, cfg.eval.sets):
        load_prompt_set(name, cfg.eval)


def _progress_callback(total: int, enabled: bool):
    """A Tune callback driving a tqdm bar over finished trials (Tune's own table is turned off).

    Tune pickles its callbacks with the experiment state; the bar is dropped from the pickle.
    """
    from ray import tune
    from tqdm.auto import tqdm

    class TrialProgress(tune.Callback):
        def __init__(self):
            self.bar = tqdm(total=total, desc="sweep trials", unit="trial", disable=not enabled)

        def __getstate__(self):
            return {}

        def __setstate__(self, state):
            self.bar = None

        def _tick(self):
            if self.bar is not None:
                self.bar.update(1)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._tick()

        def on_trial_error(self, iteration, trials, trial, **info):
            self._tick()

    return TrialProgress()


def run_trial_folder(
    trial: Trial, root: Path, stages: tuple[str, ...], tracker=None, shared: Path | None = None
) -> dict:
    """Erase and evaluate one grid point into `root/<trial.name>`; reuse it when it is already complete.
    `tracker` (the trial's MLflow run) gets the evaluation's metrics, grids and tables as they are written; `shared`
    (default: `root`'s parent, the sweep's folder) holds the work trials share (stage-1 results, the image cache)."""
    from .evaluation.runner import run_eval
    from .models.erased import is_erase_output
    from .tracking import NULL_TRACKER

    folder = root / trial.name
    shared = root.parent if shared is None else shared
    done = folder / METRICS_FILE
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    erase_dir = folder / "erase"
    if not is_erase_output(erase_dir):
        from .sweep_sharing import place_stage1
        from .workflow import run_erasure

        placed = place_stage1(trial.cfg, shared, erase_dir, stages)  # one stage 1 per distinct setting
        if not (placed and stages == ("text",)):
            run_erasure(trial.cfg, erase_dir, stages, overwrite=True, progress=False)
    ecfg = eval_config(trial.cfg, erase_dir, shared / "images")
    result = run_eval(ecfg, folder / "eval", overwrite=True, tracker=tracker or NULL_TRACKER, progress=False)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    write_json(done, metrics)
    return metrics


def tune_trainable(space: dict) -> None:
    """Ray Tune function trainable: one sweep point. Everything it needs arrives in `space` (no globals): a planned
    trial (grid, random), or the sampled point of a search algorithm with the base config (optuna)."""
    import torch
    from ray import tune

    from .quiet import quiet_libraries
    from .workflow import parse_stages

    quiet_libraries()
    torch.set_num_threads(1)
    if "trial" in space:
        spec = space["trial"]
        trial = Trial(spec["name"], spec["params"], validate(TRCEConfig, spec["cfg"]))
    else:
        from .sweep_search import decode, point_config

        params = decode(space["space"], space["params"])
        trial = Trial(tune.get_context().get_trial_name(), params, point_config(space["base"], params))
    from .sweep_tracking import log_trial_outputs, trial_run

    root = Path(space["root"])
    with trial_run(trial.cfg, trial.name, root.parent.name, space.get("mlflow_parent")) as run:
        metrics = run_trial_folder(trial, root, parse_stages(space["stages"]), run)
        log_trial_outputs(run, trial.cfg, root / trial.name, metrics)
        if "trial" not in space:
            from .sweep_search import objective_values

            metrics = {**metrics, **objective_values(trial.cfg, metrics)}
    tune.report(metrics)


def _trial_name_of(result) -> str:
    return result.config["trial"]["name"] if "trial" in result.config else Path(result.path).name


def _trial_name(trial) -> str:
    """Tune's trial (and folder) name: the planned trial's name, or for a search algorithm's trials the order in
    which it asked for them (Tune's experiment tag starts with that count, from 1) plus the sampled values."""
    if "trial" in trial.config:
        return trial.config["trial"]["name"]
    from .sweep_search import decode

    index = int(str(trial.experiment_tag).split("_", 1)[0]) - 1
    return f"t{index:02d}-{_slug(decode(trial.config['space'], trial.config['params']))}"


def _result_trial(result, cfg: TRCEConfig) -> Trial:
    """The Trial of a finished Tune result of a search algorithm (its name is its folder's)."""
    from .sweep_search import decode, point_config

    params = decode(result.config["space"], result.config["params"])
    name = Path(result.path).name
    try:
        point = point_config(cfg.model_dump(mode="json"), params)
    except ConfigError:
        point = cfg
    return Trial(name, params, point)


@dataclass
class SweepResult:
    output: Path
    rows: list[dict]  # one per trial: name, swept params, metrics or error
    best: dict | None
    ties: list[str] = field(default_factory=list)  # trials equal to the best on the metric and every tie-breaker
    breakers: list[str] = field(default_factory=list)  # metrics that broke a tie on the metric
    picked: dict | None = None  # sweep.json's `picked` when `sweep.pick` is set (trce_ray/sweep_pick.py)


def _collect(trials: list[Trial], root: Path, errors: dict[str, str]) -> list[dict]:
    rows = []
    for t in trials:
        done = root / t.name / METRICS_FILE
        metrics = json.loads(done.read_text()) if done.is_file() else {}
        error = "" if metrics else errors.get(t.name, "not run")
        rows.append({"trial": t.name, **t.params, **metrics, "error": error})
    return rows


def write_table(rows: list[dict], out: Path, stem: str = "sweep") -> list[str]:
    """`out/<stem>.csv` (every column) and `<stem>.md` (without image and skip counts); the error column last."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    columns = [c for c in columns if c != "error"] + ["error"] * ("error" in columns)
    with atomic_file(out / f"{stem}.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "")

    columns = [c for c in columns if not c.startswith(("images/", "skipped/"))]  # counts stay in the CSV
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    with atomic_file(out / f"{stem}.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return lines


def plot_metrics(cfg: TRCEConfig) -> list[str]:
    from .evaluation.registry import suites

    plugin = suites().get(cfg.eval.suite or "")
    chosen = list(cfg.sweep.plot) or list(plugin.plots if plugin is not None else [])
    if cfg.sweep.metric and cfg.sweep.metric not in chosen:
        chosen.insert(0, cfg.sweep.metric)
    return chosen


def write_plot(rows: list[dict], grid: dict, metrics: list[str], path: Path) -> bool:
    """Each metric against the first swept field (one line per combination of the others); log x when it spans 10x.
    Trials that do not set that field (listed points may set different fields) are left out of the plot."""
    x_key = next(iter(grid))
    ok = [r for r in rows if not r["error"] and r.get(x_key) is not None]
    metrics = [m for m in metrics if any(isinstance(r.get(m), (int, float)) for r in ok)]
    if not ok or not metrics:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = list(grid)[1:]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for combo in itertools.product(*(grid[k] for k in others)):
            sel = [r for r in ok if all(r.get(k) == v for k, v in zip(others, combo))]
            pts = sorted((r[x_key], r[metric]) for r in sel if isinstance(r.get(metric), (int, float)))
            if pts:
                label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, combo)) or None
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        xs = [r[x_key] for r in ok if isinstance(r[x_key], (int, float))]
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        values = [r[metric] for r in ok if isinstance(r.get(metric), (int, float))]
        if all(0 <= v <= 1 for v in values):  # a rate: show it on its full scale
            ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(x_key)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize=7)
    from .sweep_pareto import save_figure

    save_figure(fig, path)
    return True


def error_sentence(err: BaseException) -> str:
    """A trial's error as one sentence: a trce-ray error's own message (through Ray's wrappers), else the
    exception line of the traceback, never a library's footer."""
    seen, cause = set(), err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        inner = getattr(cause, "cause", None)  # Ray's wrapper (itself a TRCEError subclass when ray.get re-raises)
        if isinstance(cause, TRCEError) and not isinstance(inner, BaseException):
            text = str(cause).strip()
            return text.splitlines()[0] if text else type(cause).__name__
        cause = inner or cause.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    exc_lines = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b[^:]*: \S", line)]
    return (exc_lines or lines or [type(err).__name__])[-1]


def run_sweep(
    cfg: TRCEConfig, output: str | Path, overwrite: bool = False, resume: bool = False, progress: bool = True
) -> SweepResult:
    """Run every grid point of `cfg.sweep` as a Ray Tune trial and summarise them in `output`."""
    from .sweep_sharing import with_shared_cache
    from .sweep_tracking import with_resolved_tracking
    from .workflow import parse_stages

    stages = parse_stages(cfg.sweep.stages)
    cfg = with_resolved_tracking(with_shared_cache(cfg))  # every trial reaches the same cache and MLflow store
    trials = plan_trials(cfg)
    if "text" in stages and (cfg.stage1 is None or any(t.cfg.stage1 is None for t in trials)):
        raise ConfigError("the sweep erases with stage 1 but the config has no stage1 section (--concept ...)")
    check_eval_sets(cfg)
    out = Path(output).expanduser().resolve()
    if out.exists() and not (resume or overwrite):
        raise TRCEError(f"output folder {out} already exists; pass --resume to continue that sweep or --overwrite")
    if out.exists() and overwrite and not resume:
        shutil.rmtree(out)
    recorded = out / "sweep_config.yaml"
    if resume and recorded.is_file() and _trial_settings(recorded.read_text()) != _trial_settings(cfg.to_yaml()):
        raise TRCEError(f"{out} holds a sweep with another config; its finished trials do not apply (use --overwrite)")
    if cfg.sweep.register_as and not (cfg.tracking.enabled and cfg.sweep.pick):
        raise ConfigError("sweep.register_as needs sweep.pick (--pick RULE) and MLflow tracking to register the pick")
    out.mkdir(parents=True, exist_ok=True)
    recorded.write_text(cfg.to_yaml())

    finished = _finished_summary(cfg, trials, out) if resume else None
    if finished is not None:  # nothing to run: summarise (and pick) what the folder holds
        print(f"sweep: every trial in {out} is finished; nothing to run")
        result = SweepResult(out, finished["rows"], *rank(finished["rows"], cfg.sweep.metric, cfg.sweep.mode))
        parent_run_id = finished.get("mlflow_run_id")
    else:
        from .evaluation.dataflow import ensure_ray
        from .tracking import track

        ensure_ray()
        with track(cfg, "sweep", run_name=f"sweep {out.name}", tags={"trce.sweep": out.name}) as parent:
            result = _fit(cfg, trials, out, parent, progress)
        parent_run_id = parent.run_id
    if cfg.sweep.pick:  # after the sweep's run ended: a rule no trial meets fails the command, not the sweep
        from .sweep_pick import apply_pick

        result.picked = apply_pick(cfg, out, result.rows, parent_run_id, progress)
    return result


def _trial_settings(config_yaml: str) -> dict:
    """A recorded sweep config less what only picks among finished trials (`sweep.pick`, `sweep.register_as`)."""
    import yaml

    data = yaml.safe_load(config_yaml)
    data.get("sweep", {}).update(pick=None, register_as=None)
    return data


def _finished_summary(cfg: TRCEConfig, trials: list[Trial], out: Path) -> dict | None:
    """sweep.json of a sweep in `out` whose trials all finished (grid/random: every planned trial; optuna: the
    sampled number), else None (the trials still to run)."""
    summary_file = out / "sweep.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    rows = summary.get("rows", [])
    names = {r["trial"] for r in rows if not r.get("error")}
    planned = {t.name for t in trials}
    done = names == planned and all((out / TRIALS_DIR / n / METRICS_FILE).is_file() for n in names)
    if not trials:  # optuna: the points are asked live, so the count tells
        done = len(names) == len(rows) >= cfg.sweep.num_samples
    return summary if done else None


def ray_resources() -> dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}


def _fit(cfg: TRCEConfig, trials: list[Trial], out: Path, parent, progress: bool) -> SweepResult:
    """Run the trials through Ray Tune (each logs its own child run of `parent` live), then summarise them."""
    from ray import tune

    root = out / TRIALS_DIR
    specs = [{"name": t.name, "params": t.params, "cfg": t.cfg.model_dump(mode="json")} for t in trials]
    progress_cb = _progress_callback(len(trials) or cfg.sweep.num_samples, progress)
    param_space = {
        "trial": tune.grid_search(specs),
        "root": str(root),
        "stages": cfg.sweep.stages,
        "mlflow_parent": parent.run_id,
    }
    search = {}
    if cfg.sweep.search == "optuna":
        from .sweep_search import check_space, optuna_search

        space = check_space(cfg)
        search_alg, domains = optuna_search(cfg, space)
        param_space = {"params": domains, "space": space, "base": cfg.model_dump(mode="json"), **param_space}
        del param_space["trial"]
        search = {"search_alg": search_alg, "num_samples": cfg.sweep.num_samples}
    from .sweep_resources import concurrent_trials
    from .workflow import parse_stages

    concurrent = concurrent_trials(cfg, parse_stages(cfg.sweep.stages), ray_resources())
    if concurrent < cfg.sweep.max_concurrent:
        print(
            f"sweep: {concurrent} trial(s) at once, not {cfg.sweep.max_concurrent}: more trial slots would leave the "
            "cluster too little room for the largest phase of any of them (trce_ray/sweep_resources.py)"
        )
    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, {"cpu": cfg.sweep.trial_cpus, "gpu": cfg.sweep.trial_gpus}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            **search,
            max_concurrent_trials=concurrent,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(out),
            verbose=0,
            callbacks=[progress_cb],
            failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
        ),
    )
    grid = tuner.fit()
    progress_cb.bar.close()
    if not trials:  # a search algorithm: the trials are what it asked for
        trials = sorted((_result_trial(r, cfg) for r in grid), key=lambda t: t.name)
    errors = {}
    for result in grid:
        if result.error is not None:
            errors[_trial_name_of(result)] = error_sentence(result.error)[:500]
    return summarise_sweep(cfg, trials, _collect(trials, root, errors), out, parent)


def summarise_sweep(cfg: TRCEConfig, trials: list[Trial], rows: list[dict], out: Path, parent) -> SweepResult:
    """Write sweep.csv/md/json and the plots, log them to the sweep's run `parent`; raise (the run ends FAILED) when
    every trial failed."""
    from .sweep_pareto import summarise

    rows, summary = summarise(cfg, rows, trials, out)
    write_table(rows, out)
    swept = cfg.sweep.grid if cfg.sweep.search == "grid" and not cfg.sweep.points else {}
    if not swept and trials:  # drawn or listed points: each metric against the first field, no lines per other
        swept = {next(iter(trials[0].params)): []}
    if swept:
        write_plot(rows, swept, plot_metrics(cfg), out / "sweep.png")
    best, ties, breakers = rank(rows, cfg.sweep.metric, cfg.sweep.mode)
    write_json(
        out / "sweep.json",
        {
            "rows": rows,
            "best": best,
            "ties": ties,
            "metric": cfg.sweep.metric,
            "mode": cfg.sweep.mode,
            **summary,
            "mlflow_run_id": parent.run_id,  # the sweep's run, which a later --pick tags
        },
    )
    from .sweep_tracking import log_parent

    log_parent(parent, rows, summary, out)
    if all(r["error"] for r in rows):
        raise TRCEError(f"every trial of the sweep failed; first error: {rows[0]['error']} (see {out}/sweep.csv)")
    return SweepResult(out, rows, best, ties, breakers)
