"""Sweep search (grid, random, optuna), typed spaces, and the Pareto front over several objectives."""

import csv
import json
import math
import sys

import pytest

from trce_ray.config import load_config
from trce_ray.config.stage2 import ABLATIONS
from trce_ray.errors import ConfigError
from trce_ray.sweep import plan_trials
from trce_ray.sweep_pareto import best_by_objective, dominates, mark_front, pareto_flags
from trce_ray.sweep_search import random_points

from .test_sweep import toy_sweep

GOALS = [("toy/direct", "min"), ("toy/preservation", "max")]


def _row(name, direct=None, preservation=None, error=""):
    row = {"trial": name, "error": error}
    if direct is not None:
        row["toy/direct"] = direct
    if preservation is not None:
        row["toy/preservation"] = preservation
    return row


# Worked by hand: B beats C (same direct, more preservation) and E (same preservation, less direct); A and D tie
# (neither dominates the other, both stay); F would dominate everything but failed; G misses an objective.
HAND = [
    _row("A", 0.0, 0.5),
    _row("B", 0.1, 0.9),
    _row("C", 0.1, 0.8),
    _row("D", 0.0, 0.5),
    _row("E", 0.2, 0.9),
    _row("F", 0.0, 1.0, error="stage 2 stopped: loss is NaN"),
    _row("G", 0.0),
    _row("H", 0.3, 1.0),
    _row("I", float("nan"), 1.0),
]


def test_pareto_front_of_a_hand_worked_example():
    assert pareto_flags(HAND, GOALS) == [True, True, False, True, False, False, False, True, False]
    assert best_by_objective(HAND, GOALS) == {
        "toy/direct:min": {"trial": "A", "value": 0.0},  # A before its tie D; failed F never counts
        "toy/preservation:max": {"trial": "H", "value": 1.0},
    }
    marked = mark_front(HAND, GOALS)
    assert [r["pareto"] for r in marked][:3] == [True, True, False]
    assert list(marked[0])[-2:] == ["pareto", "error"]
    # One objective: the front is the best value, ties included.
    assert pareto_flags(HAND, GOALS[:1]) == [True, False, False, True, False, False, True, False, False]
    # Three objectives: C becomes non-dominated once it is the best on a third one.
    rows = [dict(r, extra=1.0 if r["trial"] == "C" else 0.0) for r in HAND]
    assert pareto_flags(rows, [*GOALS, ("extra", "max")])[2] is True
    assert dominates((0.0, 1.0), (0.0, 2.0)) and not dominates((0.0, 1.0), (0.0, 1.0))


def _cfg(search="random", space=None, **sweep):
    return load_config(
        None,
        {
            "model.path": "toy",
            "stage1.concept": "toy-red",
            "sweep.search": search,
            "sweep.space": space if space is not None else {"stage1.eta": {"loguniform": [0.01, 10]}},
            **{f"sweep.{k}": v for k, v in sweep.items()},
        },
    )


def test_random_points_are_seeded_inside_their_bounds_and_validated():
    space = {
        "stage1.eta": {"loguniform": [0.01, 10]},
        "train.beta": {"uniform": [5, 20]},
        "stage1.tokens": {"choice": [["eot"], ["eot", "key"]]},
    }
    trials = plan_trials(_cfg(space=space, num_samples=40))
    assert len(trials) == 40 and trials[0].name.startswith("t00-eta=")
    etas = [t.cfg.stage1.eta for t in trials]
    assert all(0.01 <= e <= 10 for e in etas) and min(etas) < 0.1 and max(etas) > 1  # spread over the log range
    assert all(5 <= t.cfg.train.beta <= 20 for t in trials)
    assert {tuple(t.cfg.stage1.tokens) for t in trials} == {("eot",), ("eot", "key")}
    assert random_points(_cfg(space=space, num_samples=40)) == [t.params for t in trials]  # same seed, same points
    other = random_points(load_config(None, {**_cfg(space=space).model_dump(mode="json"), "seed": 1}))
    assert other[0] != trials[0].params


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"space": {"stage1.etaa": {"uniform": [0.1, 1]}}}, "unknown config key 'stage1.etaa'"),
        ({"space": {"stage1.eta": {"uniform": [-1, 1]}}}, "must be > 0"),
        ({"space": {"stage1.eta": {"uniform": [1, 0.1]}}}, "needs low < high"),
        ({"space": {"stage1.eta": {"loguniform": [0, 1]}}}, "loguniform needs low > 0"),
        ({"space": {"stage1.eta": {"normal": [0, 1]}}}, "exactly one of loguniform, uniform, choice"),
        ({"space": {"stage1.eta": {"uniform": [0.1]}}}, "two numbers"),
        ({"space": {"sweep.num_samples": {"choice": [1, 2]}}}, "cannot be swept"),
        ({"space": {}}, "needs sweep.space"),
        ({"search": "grid"}, "needs sweep.search random or optuna"),
        ({"search": "optuna"}, "set sweep.objectives or sweep.metric"),
        ({"search": "optuna", "objectives": ["toy/direct"]}, "METRIC:min or METRIC:max"),
    ],
)
def test_bad_search_settings_are_one_sentence(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        plan_trials(_cfg(**kwargs))


def test_optuna_missing_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(ConfigError, match="needs the optuna package"):
        plan_trials(_cfg(search="optuna", objectives=["toy/direct:min"]))


def _read(out):
    with open(out / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def optuna_proposals(cfg, n: int) -> list[dict]:
    """The first `n` points the sweep's seeded OptunaSearch proposes, asked as Tune asks (NSGA-II's first generation
    is random, so they do not depend on the trials' results)."""
    from trce_ray.sweep_search import check_space, decode, optuna_search

    space = check_space(cfg)
    search, domains = optuna_search(cfg, space)
    search.set_search_properties(None, None, {"params": domains, "space": space})
    return [decode(space, search.suggest(f"trial{i}")["params"]) for i in range(n)]


# NSGA-II's first two draws from loguniform [1e-5, 1e4] at seed 55 (normalised eta): 6.9e-5 (red erased, and the
# other colours with it) and 5558 (red kept, and the other colours), a genuine trade-off.
PARETO_SEED, PARETO_ETAS = 55, [6.886e-5, 5557.8]


def test_optuna_sweep_returns_a_pareto_front_of_two(ray_cluster, tmp_path, capsys):
    out, tracking = tmp_path / "sweep", f"sqlite:///{tmp_path}/mlflow.db"
    rc = toy_sweep(
        out,
        tracking,
        "--search",
        "optuna",
        "--num-samples",
        "2",
        "--space",
        "stage1.eta=loguniform:1e-5,1e4",
        "--objective",
        "toy/direct:min",
        "--objective",
        "toy/preservation:max",
        "--set",
        f"seed={PARETO_SEED}",
    )
    assert rc == 0
    rows = _read(out)
    cfg = load_config(out / "sweep_config.yaml")
    proposed = [p["stage1.eta"] for p in optuna_proposals(cfg, 2)]
    assert proposed == pytest.approx(PARETO_ETAS, rel=1e-4)  # seeded: the same two points every run
    assert [float(r["stage1.eta"]) for r in rows] == pytest.approx(proposed, rel=1e-12)  # in the order asked
    assert not any(r["error"] for r in rows)
    values = [{**r, **{m: float(r[m]) for m, _ in GOALS}} for r in rows]
    low, high = values  # eta 6.9e-5, eta 5558
    # The trade-off (measured: (0, 0) and (1, 1) on these 8 prompts a set): the low eta erases red and the orange
    # neighbours with it, the high one keeps both.
    assert low["toy/direct"] == 0.0 and low["toy/preservation"] <= 0.25
    assert high["toy/direct"] >= 0.75 and high["toy/preservation"] >= 0.75
    assert [r["pareto"] for r in rows] == ["True", "True"] == [str(f) for f in pareto_flags(values, GOALS)]
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["pareto"] == [r["trial"] for r in rows]
    best = summary["best_by_objective"]["toy/preservation:max"]
    assert best == {"trial": high["trial"], "value": high["toy/preservation"]}
    assert summary["best_by_objective"]["toy/direct:min"]["trial"] == low["trial"]
    assert (out / "pareto.png").stat().st_size > 1000 and (out / "sweep.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "Pareto front" in printed and summary["pareto"][0] in printed
    assert not math.isnan(best["value"])

    # MLflow: one child run per trial, logged from the trial's own process (its eval grid and metrics), the parent
    # with the front and the best values.
    import mlflow

    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("trce-ray").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("trce.command") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == [r["trial"] for r in rows]
    assert {r.info.status for r in runs} == {"FINISHED"}
    by_name = {r.info.run_name: r for r in children}
    for row in rows:
        child = by_name[row["trial"]]
        assert child.data.metrics["toy/direct"] == pytest.approx(float(row["toy/direct"]))
        assert child.data.tags["trce.eta"] == str(float(row["stage1.eta"]))
        assert [a.path for a in client.list_artifacts(child.info.run_id, "grids")]
    assert parent.data.metrics["pareto/size"] == len(summary["pareto"])
    assert parent.data.metrics["best/toy/preservation.max"] == pytest.approx(best["value"])
    assert {"sweep.csv", "pareto.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.parametrize("name", ["toy-pareto.yaml", "table3-sd14.yaml", "table4-sd14.yaml", "table5-sd14.yaml"])
def test_shipped_sweep_configs_plan(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "jobs" / "configs" / name)
    trials = plan_trials(cfg)  # the space, objectives and (for optuna) the sampler are checked here
    if cfg.sweep.search == "optuna":
        assert trials == [] and len(cfg.sweep.objectives) == 3 and cfg.sweep.num_samples == 8
    elif name == "table5-sd14.yaml":  # the paper's four rows, each switching off one component, then none
        switches = [tuple(getattr(t.cfg.train, k) for k in ABLATIONS) for t in trials]
        assert switches == [(True, True, False), (True, False, True), (False, True, True), (True, True, True)]
        assert cfg.sweep.stages == "text,visual" and len({t.name for t in trials}) == 4
        assert {t.cfg.stage1.model_dump_json() for t in trials} == {cfg.stage1.model_dump_json()}  # one stage 1
    else:
        assert len(trials) == {"table3-sd14.yaml": 4, "table4-sd14.yaml": 5}[name]
        assert len({t.cfg.stage1.eta for t in trials} | {tuple(t.cfg.stage1.tokens) for t in trials}) >= 4


def test_concurrent_trials_leave_room_for_the_largest_phase():
    from trce_ray.sweep_resources import concurrent_trials, trial_peak

    base = {"model.path": "toy", "eval.cpus_per_actor": 0.5, "eval.scorer_cpus": 0.5, "sweep.max_concurrent": 4}
    cfg = load_config(None, base)
    # slot 0.25, largest phase generation 0.5 + scoring 0.5 = 1: n trials need 0.25 n + 1 CPUs, so
    # 1.5 CPUs hold 2, 2 CPUs hold 4 (the cap), 1.25 CPUs one.
    assert trial_peak(cfg, ("text",), 0) == {"CPU": 1.25, "GPU": 0.0}
    assert concurrent_trials(cfg, ("text",), {"CPU": 1.5}) == 2
    assert concurrent_trials(cfg, ("text",), {"CPU": 2}) == 4
    assert concurrent_trials(cfg, ("text",), {"CPU": 1.25}) == 1
    # On GPUs a generation actor takes a whole GPU by default: 0.5 GPU slots beside 1 GPU of phase, 3 on 2.5 GPUs.
    gpu = load_config(None, {**base, "sweep.trial_gpus": 0.5})
    assert concurrent_trials(gpu, ("text",), {"CPU": 64, "GPU": 2.5}) == 3
    # Stage 2's phases count too: two training workers of 1 CPU outgrow the evaluation's 1 CPU.
    tv = load_config(None, {**base, "train.num_workers": 2, "train.batch_size": 2})
    assert trial_peak(tv, ("text", "visual"), 0)["CPU"] == 2.25
    assert concurrent_trials(tv, ("text", "visual"), {"CPU": 2.75}) == 3
    with pytest.raises(ConfigError, match="needs 2.25 CPU at its peak"):
        concurrent_trials(tv, ("text", "visual"), {"CPU": 2})


def test_optuna_searchers_survive_tunes_pickle():
    import pickle as std_pickle

    import ray.cloudpickle as pickle

    from trce_ray.sweep_search import check_space, optuna_search

    for goals in (["toy/direct:min"], ["toy/direct:min", "toy/preservation:max"]):
        cfg = _cfg(search="optuna", objectives=goals, num_samples=6)
        search, domains = optuna_search(cfg, check_space(cfg))
        copy = pickle.loads(pickle.dumps(search))  # Tune writes its searcher into the experiment state
        assert type(std_pickle.loads(std_pickle.dumps(search._sampler))) is type(search._sampler)  # Searcher.save
        name = type(copy._sampler).__name__
        assert name == ("TPESampler" if len(goals) == 1 else "NSGAIISampler") and set(domains) == {"stage1.eta"}


def test_search_trials_are_named_in_the_order_tune_asked_for_them():
    from types import SimpleNamespace

    from trce_ray.sweep import _trial_name

    space = {"stage1.eta": {"loguniform": [0.01, 10]}, "stage1.tokens": {"choice": [["eot"], ["eot", "key"]]}}
    trial = SimpleNamespace(
        experiment_tag="3_params/stage1.eta=0.2055",  # Tune's SearchGenerator counts its trials from 1
        config={"space": space, "params": {"stage1.eta": 0.20554321, "stage1.tokens": 1}},
    )
    assert _trial_name(trial) == "t02-eta=0.2055,tokens=-eot-,-key-"


def test_parse_space_item():
    from trce_ray.cli.sweep import parse_space_item

    key, spec = parse_space_item("stage1.eta=loguniform:1e-3,10")  # YAML 1.1 reads 1e-3 as text; the config won't
    cfg = load_config(None, {"model.path": "toy", "sweep.space": {key: spec}})
    assert cfg.sweep.space == {key: {"loguniform": [0.001, 10]}}
    assert parse_space_item("stage1.tokens=choice:[eot];[eot,key]") == (
        "stage1.tokens",
        {"choice": [["eot"], ["eot", "key"]]},
    )
    with pytest.raises(ConfigError, match="loguniform\\|uniform\\|choice:V1,V2"):
        parse_space_item("stage1.eta=normal:0,1")
