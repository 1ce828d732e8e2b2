"""`trce-ray campaign`: bad campaign files fail with one sentence and write nothing; a real campaign on the toy world
runs each erasure as a Ray task (one failing on purpose), summarises, nests MLflow runs, and resumes."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from trce_ray.artifacts import load_delta
from trce_ray.cli import main
from trce_ray.toy.packs import preserve_file

RED = {"name": "red", "concept": "toy-red", "suite": "toy", "set": {"model.path": "toy"}}


def _campaign(tmp_path, data, *extra):
    """Run `trce-ray campaign` on `data` (written as YAML) into tmp_path/out, MLflow at tmp_path/mlflow.db."""
    f = tmp_path / "campaign.yaml"
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    return main(["campaign", "--file", str(f), "--output", str(tmp_path / "out"), "--tracking-uri", tracking, *extra])


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "lists no erasures"),
        ({"defaults": {"suite": "toy"}, "erasures": []}, "lists no erasures"),
        ([{**RED, "colour": "red"}], "campaign entry 1 has an unknown field 'colour'"),
        ({"defaults": {"suit": "toy"}, "erasures": [RED]}, "the campaign's defaults has an unknown field 'suit'"),
        ([RED, {**RED, "concept": "toy-blue"}], "campaign erasure name 'red' is given twice"),
        (
            [RED, {**RED, "name": "bad", "set": {"model.path": "toy", "stage1.eta": -1}}],
            "campaign entry 'bad': config field 'stage1.eta'",
        ),
        ([{**RED, "set": {"model.path": "toy", "stage1.etaa": 1}}], "campaign entry 'red': unknown config key"),
        ([{**RED, "concept": "no-such-pack"}], "campaign entry 'red': .*no-such-pack"),
        ([{**RED, "suite": None}], "campaign entry 'red': every erasure is evaluated"),
        ([{**RED, "stages": "text,text"}], "campaign entry 'red': --stages"),
        ([{**RED, "name": "../up"}], "campaign entry 1 needs a name usable as a folder name"),
    ],
)
def test_bad_campaign_is_one_sentence_and_writes_nothing(tmp_path, capsys, data, message):
    assert _campaign(tmp_path, data) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("trce-ray campaign: error: ")
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaign.yaml"]  # no output folder, no MLflow store


def test_existing_output_needs_resume_or_overwrite(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    assert _campaign(tmp_path, [RED]) == 2
    assert "already exists; pass --resume to continue that campaign or --overwrite" in capsys.readouterr().err
    assert _campaign(tmp_path, [RED], "--overwrite") == 2  # a folder trce-ray did not write is never replaced
    assert "was not written by trce-ray" in capsys.readouterr().err
    assert _campaign(tmp_path, [RED], "--resume") == 2
    assert "is not a campaign folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
    assert not (tmp_path / "mlflow.db").exists()


def _toy_campaign(tmp_path) -> dict:
    """Red erased by stage 1 (the toy demo's TRCE(T) row), and an erasure that fails at run time (a T5 token role on
    the CLIP-only toy); 8 prompts a set at 10 steps. Nothing runs at once (2 CPUs: 0.5 task + 1 of eval actors)."""
    return {
        "defaults": {
            "suite": "toy",
            "set": {
                "model.path": "toy",
                "cache.root": str(tmp_path / "cache"),
                "stage1.convention": "normalised",
                "stage1.eta": 1.0,
                "stage1.preserve_prompts": str(preserve_file("red")),
                "stage1.num_cpus": 0.5,
                "eval.steps": 10,
                "eval.limit": 8,
                "eval.cpus_per_actor": 0.5,
                "eval.scorer_cpus": 0.5,
            },
        },
        "erasures": [
            {"name": "red", "concept": "toy-red"},
            {"name": "bad", "concept": "toy-blue", "set": {"stage1.tokens": ["t5:last"]}},
        ],
    }


@pytest.mark.slow
def test_campaign_runs_erasures_as_tasks_reports_failures_and_resumes(ray_cluster, tmp_path, capsys):
    import mlflow

    data = _toy_campaign(tmp_path)
    out, tracking = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    assert _campaign(tmp_path, data) == 0
    with open(out / "campaign.csv", newline="") as f:
        rows = {r["erasure"]: r for r in csv.DictReader(f)}
    red, bad = rows["red"], rows["bad"]
    assert (red["status"], red["concepts"], red["stages"], red["error"]) == ("finished", "toy-red", "text", "")
    assert bad["status"] == "failed" and bad["toy/direct"] == ""
    assert bad["error"] == "token role 't5:last' names the t5 segment, but this model's text has only clip"
    assert "| red | toy-red | text | finished |" in (out / "campaign.md").read_text()
    # Red is gone (toy demo: 100% -> 0%) and the other colours stay (measured 1.0 and 0.875 on these 8 prompts).
    assert float(red["toy/direct"]) <= 0.25 and float(red["toy/preservation"]) >= 0.75

    # The erased weights are bitwise those of `trce-ray erase` with the same config.
    s = data["defaults"]["set"]
    direct = tmp_path / "direct"
    argv = ["erase", "--model", "toy", "--concept", "toy-red", "--output", str(direct), "--no-tracking"]
    argv += [a for k in ("cache.root", "stage1.convention", "stage1.eta", "stage1.preserve_prompts") for a in
             ("--set", f"{k}={s[k]}")]  # fmt: skip
    assert main(argv) == 0
    ours, theirs = load_delta(out / "red" / "erase" / "stage1.safetensors"), load_delta(direct / "stage1.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    # `trce-ray report` reads the campaign folder: one row per finished erasure, by name.
    from trce_ray.campaign import report_runs

    (run,) = report_runs(out)
    assert run.label == "red" and run.metrics["toy/direct"] == float(red["toy/direct"])

    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("trce-ray").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("trce.command") == "campaign"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.data.metrics["erasures/failed"] == 1
    assert {n: r.info.status for n, r in children.items()} == {"red": "FINISHED", "bad": "FAILED"}
    assert "t5:last" in children["bad"].data.tags["trce.error"]
    assert children["red"].data.metrics["toy/direct"] == float(red["toy/direct"])

    # --resume keeps the finished erasure (its files untouched, no new run) and runs the failed one again.
    done = out / "red" / "metrics.json"
    before = (done.stat().st_mtime_ns, (out / "red" / "erase" / "stage1.safetensors").stat().st_mtime_ns)
    capsys.readouterr()
    assert _campaign(tmp_path, data, "--resume") == 0
    assert "kept 1 erasure(s)" in capsys.readouterr().out
    assert before == (done.stat().st_mtime_ns, (out / "red" / "erase" / "stage1.safetensors").stat().st_mtime_ns)
    with open(out / "campaign.csv", newline="") as f:
        assert {r["erasure"]: r["status"] for r in csv.DictReader(f)} == {"red": "kept", "bad": "failed"}
    runs = client.search_runs([client.get_experiment_by_name("trce-ray").experiment_id])
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("trce.erasure")) == ["bad", "bad", "red"]

    # A finished erasure whose entry changed is not silently kept.
    data["erasures"][0]["set"] = {"stage1.eta": 2.0}
    assert _campaign(tmp_path, data, "--resume") == 2
    assert "campaign erasure 'red' changed since it finished" in capsys.readouterr().err
    assert json.loads((out / "campaign_config.json").read_text())["red"]["config"]["stage1"]["eta"] == 1.0

    # When every erasure fails, the campaign fails too and its run ends FAILED.
    only_bad = {"defaults": data["defaults"], "erasures": data["erasures"][1:]}
    (tmp_path / "out").rename(tmp_path / "first")
    assert _campaign(tmp_path, only_bad) == 2
    assert "every erasure of the campaign failed; first error: token role 't5:last'" in capsys.readouterr().err
    runs = client.search_runs([client.get_experiment_by_name("trce-ray").experiment_id])
    statuses = sorted(r.info.status for r in runs if r.data.tags.get("trce.command") == "campaign")
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]


def test_error_sentence_reads_through_ray_get_wrapper():
    """ray.get re-raises a task's TRCEError as a class deriving from both RayTaskError and TRCEError, whose text is
    Ray's traceback; the row gets the task's own sentence."""
    from ray.exceptions import RayTaskError

    from trce_ray.errors import TRCEError
    from trce_ray.sweep import error_sentence

    inner = TRCEError("token role 't5:last' names the t5 segment")
    wrapped = RayTaskError("campaign bad", "Traceback (most recent call last):\n  ...", inner).as_instanceof_cause()
    assert isinstance(wrapped, TRCEError) and str(wrapped).splitlines()[0] != str(inner)
    assert error_sentence(wrapped) == str(inner)


def test_erasure_the_cluster_cannot_hold_is_refused_by_name():
    from trce_ray.campaign import entry_erasure
    from trce_ray.campaign_run import peaks
    from trce_ray.errors import ConfigError

    entry = {**RED, "set": {"model.path": "toy", "stage1.num_cpus": 0.5, "eval.cpus_per_actor": 0.5}}
    e = entry_erasure(entry, {}, Path("/tmp/out"), {"tracking.enabled": False})
    # its task (0.5) + generation (0.5) and scoring (1, the default) actors
    assert peaks([e], {"CPU": 2.0}) == {"red": {"CPU": 2.0, "GPU": 0.0}}
    with pytest.raises(ConfigError, match="campaign entry 'red' needs 2 CPU at its peak .* the cluster has 1.5"):
        peaks([e], {"CPU": 1.5})


def test_runs_of_erasures_whose_worker_died_end_failed(tmp_path):
    """A task killed with its worker never ends its run; the campaign ends it FAILED with the error sentence."""
    import mlflow

    from trce_ray.campaign_run import end_lost_runs
    from trce_ray.config import load_config
    from trce_ray.tracking import track

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(None, {"model.path": "toy", "tracking.uri": uri})
    with track(cfg, "campaign") as parent:
        client = mlflow.MlflowClient(uri)
        experiment = client.get_run(parent.run_id).info.experiment_id
        tags = {"mlflow.parentRunId": parent.run_id}
        lost = client.create_run(experiment, tags={**tags, "trce.erasure": "lost"}).info.run_id
        alive = client.create_run(experiment, tags={**tags, "trce.erasure": "alive"}).info.run_id
        assert end_lost_runs(parent, {"lost": "the worker died"}) == ["lost"]
    assert client.get_run(lost).info.status == "FAILED"
    assert client.get_run(lost).data.tags["trce.error"] == "the worker died"
    assert client.get_run(alive).info.status == "RUNNING"


def test_shipped_toy_campaign_plans_three_erasures(tmp_path, monkeypatch):
    from trce_ray.campaign import plan_campaign

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # its preservation prompt files are repository paths, resolved where the command runs
    shipped = root / "jobs" / "configs" / "toy-campaign.yaml"
    plan = plan_campaign(shipped, tmp_path / "out", {"tracking.enabled": False})
    assert [(e.name, e.stages) for e in plan] == [("red", ("text",)), ("green", ("text",)), ("red-green", ("text",))]
    red, green, joint = (e.cfg for e in plan)
    assert joint.stage1.concepts == ["toy-red", "toy-green"] and green.eval.toy_target == "green"
    assert red.stage1.preserve_prompts == str(root / "trce_ray" / "toy" / "prompts" / "preserve-red.txt")
    assert red.stage1.eta == 1.0 and red.output == str(tmp_path / "out" / "red") and not red.tracking.enabled
    assert not (tmp_path / "out").exists()
