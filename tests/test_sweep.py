"""`trce-ray sweep` on the toy world: grid validation, one Tune trial per point, summaries, MLflow runs, resume."""

import csv
import json

import pytest

from trce_ray.cli import main
from trce_ray.cli.sweep import parse_grid_item
from trce_ray.config import load_config
from trce_ray.errors import ConfigError
from trce_ray.sweep import grid_trials, plan_trials, write_plot
from trce_ray.toy.packs import preserve_file


def _cfg(**grid):
    return load_config(None, {"model.path": "toy", "stage1.concept": "toy-red", "sweep.grid": grid})


def test_grid_expands_every_combination_with_validated_configs():
    trials = grid_trials(_cfg(**{"stage1.eta": [0.1, 1.0], "stage1.tokens": [["eot"], ["eot", "key"]]}))
    assert [t.name for t in trials] == [
        "t00-eta=0.1,tokens=-eot-",
        "t01-eta=0.1,tokens=-eot-,-key-",
        "t02-eta=1.0,tokens=-eot-",
        "t03-eta=1.0,tokens=-eot-,-key-",
    ]
    assert trials[3].cfg.stage1.eta == 1.0 and trials[3].cfg.stage1.tokens == ["eot", "key"]
    assert trials[0].cfg.model.path == "toy"


def test_plot_of_points_that_set_different_fields_leaves_out_those_without_the_x_field(tmp_path):
    """Table 5's points switch different fields: the plot draws the trials that set the first one, no KeyError."""
    rows = [
        {"error": "", "train.preserve_loss": False, "toy/direct": 0.0},
        {"error": "", "train.erase_contrast": False, "toy/direct": 0.5},
        {"error": "", "train.preserve_loss": True, "toy/direct": 0.25},
    ]
    assert write_plot(rows, {"train.preserve_loss": []}, ["toy/direct"], tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0
    assert not write_plot(rows[1:2], {"train.preserve_loss": []}, ["toy/direct"], tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


def test_points_run_as_listed_and_cross_the_grid():
    """sweep.points: each listed point once (Table 5's rows, not the 8 of a full grid), crossed with sweep.grid."""
    points = [{"train.lam": 0.0, "train.beta": 2.0}, {"train.lam": 5.0}]
    base = {"model.path": "toy", "stage1.concept": "toy-red", "sweep.points": points}
    trials = grid_trials(load_config(None, {**base, "sweep.grid": {"stage1.eta": [0.1, 1.0]}}))
    assert [t.name for t in trials] == [
        "t00-lam=0.0,beta=2.0,eta=0.1",
        "t01-lam=0.0,beta=2.0,eta=1.0",
        "t02-lam=5.0,eta=0.1",
        "t03-lam=5.0,eta=1.0",
    ]
    assert [(t.cfg.train.lam, t.cfg.train.beta, t.cfg.stage1.eta) for t in trials] == [
        (0.0, 2.0, 0.1),
        (0.0, 2.0, 1.0),
        (5.0, 15.0, 0.1),
        (5.0, 15.0, 1.0),
    ]
    assert len(grid_trials(load_config(None, base))) == 2
    with pytest.raises(ConfigError, match="sweep.points needs sweep.search grid"):
        plan_trials(
            load_config(None, {**base, "sweep.search": "random", "sweep.space": {"stage1.eta": {"choice": [1]}}})
        )
    with pytest.raises(ConfigError, match="train.lamb"):
        grid_trials(load_config(None, {**base, "sweep.points": [{"train.lamb": 1}]}))
    with pytest.raises(ConfigError, match="needs at least one field"):
        load_config(None, {**base, "sweep.points": [{}]})


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"stage1.etaa": [1]}, "unknown config key 'stage1.etaa'"),
        ({"stage1.eta": [0.1, -1]}, "eta must be > 0"),
        ({"sweep.max_concurrent": [2]}, "cannot be swept"),
        ({"stage1.eta": []}, "non-empty list"),
    ],
)
def test_bad_grid_is_one_clear_error(grid, message):
    with pytest.raises(ConfigError, match=message):
        grid_trials(_cfg(**grid))


def test_parse_grid_item():
    assert parse_grid_item("stage1.eta=0.01,0.1,1") == ("stage1.eta", [0.01, 0.1, 1])
    assert parse_grid_item("stage1.tokens=[eot];[eot,key]") == ("stage1.tokens", [["eot"], ["eot", "key"]])
    with pytest.raises(ConfigError, match="section.field=V1,V2"):
        parse_grid_item("stage1.eta")


def toy_sweep(out, tracking, *extra):
    """`trce-ray sweep` on the toy world: red erased by stage 1, 8 prompts per eval set, MLflow at `tracking`."""
    return main(
        [
            "sweep",
            "--model",
            "toy",
            "--concept",
            "toy-red",
            "--preserve-prompts",
            str(preserve_file("red")),
            "--suite",
            "toy",
            "--tracking-uri",
            tracking,
            "--set",
            "stage1.convention=normalised",  # the eta ranges swept are normalised ones (docs/stage1.md)
            "--set",
            "eval.steps=10",
            "--set",
            "eval.limit=8",
            "--set",
            "eval.cpus_per_actor=0.5",
            "--set",
            "eval.scorer_cpus=0.5",
            "--output",
            str(out),
            *extra,
        ]
    )


def _sweep(out, tracking, *extra):
    return toy_sweep(out, tracking, "--grid", "stage1.eta=0.05,2", "--metric", "toy/direct", *extra)


@pytest.mark.slow
def test_sweep_runs_each_point_summarises_logs_and_resumes(ray_cluster, tmp_path, capsys):
    out, tracking = tmp_path / "sweep", f"sqlite:///{tmp_path}/mlflow.db"
    assert _sweep(out, tracking) == 0
    with open(out / "sweep.csv", newline="") as f:
        rows = {r["trial"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"t00-eta=0.05", "t01-eta=2"} and not any(r["error"] for r in rows.values())
    low, high = rows["t00-eta=0.05"], rows["t01-eta=2"]
    # Red is gone at both settings (toy demo: 0% from 100%), and the paper's trade-off holds: more preservation
    # weight keeps the other colours better (measured 0.625 at eta 0.1 vs 0.875 at eta 1 on these 8 prompts).
    assert float(low["toy/direct"]) <= 0.25 and float(high["toy/direct"]) <= 0.25
    assert float(high["toy/preservation"]) > float(low["toy/preservation"])
    assert (out / "sweep.png").stat().st_size > 1000
    assert json.loads((out / "sweep.json").read_text())["best"]["trial"] in rows
    for name in rows:
        assert (out / "trials" / name / "erase" / "stage1.safetensors").is_file()

    import mlflow

    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("trce-ray").experiment_id])
    parent = [r for r in runs if r.data.tags.get("trce.command") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}

    # A second run without --resume refuses the folder; with --resume it reuses both finished trials.
    assert _sweep(out, tracking) == 2
    assert "--resume" in capsys.readouterr().err
    marker = out / "trials" / "t00-eta=0.05" / "metrics.json"
    before = marker.stat().st_mtime_ns
    assert _sweep(out, tracking, "--resume") == 0
    assert marker.stat().st_mtime_ns == before

    # Resumed when finished, with a pick rule: no trial runs again; the original model is evaluated once (it draws
    # red: toy/direct well above the erased trials'), the rule picks, and the pick is registered from its trial's run.
    rule = "min toy/direct where toy/preservation >= original - 0.5"
    capsys.readouterr()
    assert _sweep(out, tracking, "--resume", "--pick", rule, "--register", "toy-red-erased") == 0
    assert marker.stat().st_mtime_ns == before
    summary = json.loads((out / "sweep.json").read_text())
    original = summary["original"]
    assert original["toy/direct"] >= 0.75 and original["toy/preservation"] >= 0.5
    meets = [r for r in rows.values() if float(r["toy/preservation"]) >= original["toy/preservation"] - 0.5]
    expected = min(meets, key=lambda r: (float(r["toy/direct"]), -float(r["toy/preservation"])))["trial"]
    picked = summary["picked"]
    assert (picked["trial"], picked["rule"], picked["registered"]["version"]) == (expected, rule, "1")
    assert f"picked by {rule!r}: {expected}" in capsys.readouterr().out
    runs = client.search_runs([client.get_experiment_by_name("trce-ray").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("trce.command") == "sweep"]  # no resume opened another
    assert parent.data.tags["trce.picked"] == expected and parent.data.tags["trce.registered"] == "toy-red-erased/1"
    version = client.get_model_version("toy-red-erased", "1")
    assert client.get_run(version.run_id).info.run_name == expected
    assert {a.path for a in client.list_artifacts(version.run_id, "erased_model")} >= {
        "erased_model/stage1.safetensors"
    }
    # a rule no trial meets is one sentence, and the pick before it stays
    assert _sweep(out, tracking, "--resume", "--pick", "min toy/direct where toy/preservation > 1") == 2
    assert "no trial meets the pick rule" in capsys.readouterr().err
    assert json.loads((out / "sweep.json").read_text())["picked"]["trial"] == expected


def test_bad_eval_set_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(
        [
            "sweep",
            "--model",
            "toy",
            "--concept",
            "toy-red",
            "--grid",
            "stage1.eta=1",
            "--sets",
            "no-such-set",
            "--output",
            str(out),
        ]
    )
    assert rc == 2 and "unknown prompt set 'no-such-set'" in capsys.readouterr().err
    assert not out.exists()
