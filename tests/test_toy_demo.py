"""The main job's contract on a reduced setting: results.json keys, one subfolder per erased row, grids, refusal
of an existing folder, and nothing half-written when a row fails."""

import json

import pytest
from safetensors.torch import load_file

from trce_ray.cli import main
from trce_ray.errors import TRCEError
from trce_ray.toy import rows as toy_rows
from trce_ray.toy.assets import toy_pipeline_dir

SMALL = [
    "--set",
    "n_direct=4",
    "--set",
    "n_paraphrase=4",
    "--set",
    "n_per_colour=1",
    "--set",
    "steps=4",
    "--no-progress",
]
KEYS = {"direct", "paraphrase", "preservation", "fid_gen", "agreement"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["toy", "demo", "--output", str(out), *SMALL]) == 0
    return out


@pytest.mark.slow
def test_results_json_has_one_row_per_model_with_the_contract_keys(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    assert list(results["rows"]) == ["original", "TRCE(T)", "TRCE(V)", "TRCE(T+V)"]
    for name, row in results["rows"].items():
        assert KEYS <= set(row), name
        for key in KEYS - {"fid_gen"}:
            assert 0.0 <= row[key] <= 1.0, (name, key, row[key])
        assert row["fid_gen"] >= 0.0
    assert results["rows"]["original"]["fid_gen"] == 0.0
    assert results["prompt_sets"] == {"direct": 4, "paraphrase": 4, "preservation": 7}


@pytest.mark.slow
def test_each_erased_row_has_its_subfolder_and_every_row_a_grid(demo_dir):
    delta = load_file(str(demo_dir / "TRCE(T)" / "stage1.safetensors"))
    assert delta and all(".attn2.to_" in k for k in delta)
    assert (demo_dir / "TRCE(T)" / "config.yaml").is_file()
    assert (demo_dir / "grid_original.png").is_file() and (demo_dir / "grid_TRCE(T).png").is_file()
    assert not (demo_dir / "original").exists()
    assert "TRCE(T)" in (demo_dir / "table.txt").read_text()


@pytest.mark.slow
def test_existing_output_is_refused(demo_dir, capsys):
    assert main(["toy", "demo", "--output", str(demo_dir), *SMALL]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_failing_row_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    def broken(ctx):
        raise TRCEError("row exploded")

    monkeypatch.setitem(toy_rows.ROWS, "TRCE(T)", broken)
    out = tmp_path / "never"
    assert main(["toy", "demo", "--output", str(out), *SMALL]) == 2
    assert "row exploded" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unknown_row_and_target_are_one_sentence_errors(tmp_path, capsys):
    assert main(["toy", "demo", "--output", str(tmp_path / "x"), "--rows", "TRCE(Q)"]) == 2
    assert "unknown row 'TRCE(Q)'" in capsys.readouterr().err
    assert main(["toy", "demo", "--output", str(tmp_path / "x"), "--target", "gray"]) == 2
    assert "target must be one of" in capsys.readouterr().err
    assert main(["toy", "demo", "--output", str(tmp_path / "x"), "--set", "stage2.train.bogus=1"]) == 2
    assert "train.bogus" in capsys.readouterr().err
    assert main(["toy", "demo", "--output", str(tmp_path / "x"), "--set", "stage2.eval.steps=1"]) == 2
    assert "stage2 takes cache and train overrides" in capsys.readouterr().err
    assert main(["toy", "demo", "--output", str(tmp_path / "x"), "--set", f"pipeline={tmp_path}"]) == 2
    assert "is not a diffusers pipeline folder" in capsys.readouterr().err
    sd = str(toy_pipeline_dir())
    assert main(["toy", "demo", "--output", str(tmp_path / "x"), "--family", "flux", "--set", f"pipeline={sd}"]) == 2
    assert "is not a flux toy; set family to match it" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_demo_logs_one_run_with_a_child_run_per_row_holding_its_metrics_and_grid(demo_dir):
    import os

    from mlflow import MlflowClient

    results = json.loads((demo_dir / "results.json").read_text())
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("trce-ray")
    parent = next(
        r
        for r in client.search_runs(  # the fixture's run is the first (a later test's refused rerun has its name)
            [exp.experiment_id], "tags.`trce.command` = 'toy-demo'", order_by=["attributes.start_time ASC"]
        )
        if r.info.run_name == f"toy demo {demo_dir.name}" and r.data.params["target"] == "red"
    )
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"table.txt", "results.json"}
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(results["rows"])
    for child in children:
        row = results["rows"][child.info.run_name]
        assert {k: child.data.metrics[k] for k in row} == pytest.approx(row, abs=0)
        grids = [a.path for a in client.list_artifacts(child.info.run_id, "grids")]
        assert grids == [f"grids/grid_{child.info.run_name}.png"]
