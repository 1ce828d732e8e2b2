"""MLflow tracking: URI resolution, run lifecycle (FINISHED/FAILED/KILLED), params, artifacts, lineage, erase CLI."""

import hashlib
import os
import signal
from pathlib import Path

import pytest
import torch

from trce_ray.artifacts import save_delta
from trce_ray.config import load_config
from trce_ray.errors import TRCEError
from trce_ray.interrupts import Interrupted
from trce_ray.tracking import NULL_TRACKER, flatten, log_erase_output, resolve_tracking_uri, track


@pytest.fixture
def exp(request):
    """(session database URI, an experiment name of this test): creating a sqlite store costs seconds, so the
    tests share the session's database (conftest) and keep apart by experiment."""
    return os.environ["MLFLOW_TRACKING_URI"], f"test-{request.node.name}"


def client_for(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def only_run(uri, experiment):
    c = client_for(uri)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return c, runs[0]


def config(uri, experiment, **overrides):
    return load_config(
        overrides={"model.path": "toy", "tracking.uri": uri, "tracking.experiment": experiment, **overrides}
    )


def test_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path / 'rel' / 'x.db'}"
    assert resolve_tracking_uri("runs/t.db") == f"sqlite:///{tmp_path / 'runs' / 't.db'}"
    with pytest.raises(TRCEError, match="file store"):
        resolve_tracking_uri("file:///tmp/mlruns")
    with pytest.raises(TRCEError, match="folder path"):
        resolve_tracking_uri("mlruns")


def test_flatten_config():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x"})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "d": "null", "e": "x"}


def test_run_finishes_with_config_params_and_metrics(exp, tmp_path):
    uri, name = exp
    cfg = config(uri, name, **{"output": str(tmp_path / "o"), "eval.steps": 3})
    with track(cfg, "eval") as run:
        assert run.active
        run.log_metrics({"asr/mma": 0.25, "missing": None, "nan": float("nan")})
        run.log_text("hello", "notes/a.txt")
    c, r = only_run(uri, name)
    assert r.info.status == "FINISHED" and r.info.run_name == "eval o"
    assert r.data.params["eval.steps"] == "3" and r.data.params["model.path"] == "toy"
    assert r.data.tags["trce.command"] == "eval"
    assert r.data.metrics == {"asr/mma": 0.25}
    assert [a.path for a in c.list_artifacts(r.info.run_id, "notes")] == ["notes/a.txt"]
    art = Path(r.info.artifact_uri.replace("file://", ""))
    db = Path(uri[len("sqlite:///") :])
    assert art.is_relative_to(db.parent / "mlartifacts")  # artifacts beside the sqlite database


def test_failing_command_ends_failed_and_keeps_the_error(exp):
    uri, name = exp
    with pytest.raises(TRCEError, match="boom"), track(config(uri, name), "train"):
        raise TRCEError("boom")
    _, r = only_run(uri, name)
    assert r.info.status == "FAILED" and r.data.tags["trce.error"] == "TRCEError: boom"


def test_interrupted_command_ends_killed(exp):
    uri, name = exp
    with pytest.raises(Interrupted), track(config(uri, name), "eval"):
        raise Interrupted(signal.SIGTERM)
    _, r = only_run(uri, name)
    assert r.info.status == "KILLED" and r.data.tags["trce.error"] == "Interrupted: SIGTERM"


def test_disabled_and_non_primary_processes_do_not_log(exp, monkeypatch):
    uri, name = exp
    with track(config(uri, name, **{"tracking.enabled": False}), "eval") as run:
        assert run is NULL_TRACKER
        run.log_metrics({"x": 1.0})
        assert run.register_model("m", "a") is None
    monkeypatch.setenv("RANK", "1")
    with track(config(uri, name), "train") as run:
        assert not run.active
    assert client_for(uri).get_experiment_by_name(name) is None


def fake_erase_folder(folder: Path, cfg) -> Path:
    folder.mkdir()
    (folder / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(0)
    save_delta(folder / "stage1.safetensors", {"w": torch.randn(4, 4)}, {"format": "trce-ray-delta"})
    (folder / "stage1_summary.json").write_text("{}")
    return folder


def test_erased_model_registered_with_lineage_and_exact_deltas(exp, tmp_path):
    uri, name = exp
    cfg = config(
        uri,
        name,
        **{
            "model.path": "CompVis/stable-diffusion-v1-4",
            "stage1.concept": "sexual",
            "stage1.eta": 0.02,
            "tracking.register_as": f"{name}-sd14",
        },
    )
    folder = fake_erase_folder(tmp_path / "erase", cfg)
    with track(cfg, "erase") as run:
        version = log_erase_output(run, cfg, folder, {"erase_residual": 0.5})
    assert version == "1"
    c, r = only_run(uri, name)
    mv = c.get_model_version(f"{name}-sd14", "1")
    assert mv.run_id == r.info.run_id
    assert mv.tags["trce.base_model"] == "CompVis/stable-diffusion-v1-4"
    assert mv.tags["trce.concept"] == "sexual" and mv.tags["trce.eta"] == "0.02" and mv.tags["trce.stages"] == "stage1"
    local = Path(c.download_artifacts(r.info.run_id, "erased_model/stage1.safetensors", str(tmp_path / "dl")))
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (local, folder / "stage1.safetensors")]
    assert digest[0] == digest[1]
    assert r.data.metrics["erase_residual"] == 0.5
    # a second registration is version 2 of the same model
    with track(cfg, "erase") as run:
        assert log_erase_output(run, cfg, folder) == "2"


def test_erase_command_logs_a_run(exp, tiny_sd_dir, tmp_path):
    from trce_ray.cli import main

    uri, name = exp
    out = tmp_path / "erase"
    rc = main(
        [
            "erase",
            "--model",
            str(tiny_sd_dir),
            "--concept",
            "sexual",
            "--templates",
            "2",
            "--synonyms",
            "3",
            "--output",
            str(out),
            "--tracking-uri",
            uri,
            "--experiment",
            name,
            "--register-model",
            f"{name}-tiny",
        ]
    )
    assert rc == 0
    c, r = only_run(uri, name)
    assert r.info.status == "FINISHED" and r.data.tags["trce.command"] == "erase"
    assert r.data.params["stage1.concept"] == "sexual" and "erase_residual" in r.data.metrics
    logged = {a.path for a in c.list_artifacts(r.info.run_id, "erased_model")}
    assert {"erased_model/stage1.safetensors", "erased_model/config.yaml"} <= logged
    assert c.get_model_version(f"{name}-tiny", "1").tags["trce.base_model"] == str(tiny_sd_dir)


def test_losing_the_race_to_create_the_experiment_uses_the_winners(exp):
    """Concurrent jobs on a fresh server: the experiment appears between our lookup and our create."""
    from mlflow.exceptions import MlflowException

    from trce_ray.tracking import _experiment_id

    uri, name = exp
    real = client_for(uri)

    class Racing:
        def get_experiment_by_name(self, n):
            self.calls = getattr(self, "calls", 0) + 1
            return None if self.calls == 1 else real.get_experiment_by_name(n)

        def create_experiment(self, n, artifact_location=None):
            real.create_experiment(n)  # the other job wins
            raise MlflowException("already exists", error_code="RESOURCE_ALREADY_EXISTS")

    assert _experiment_id(Racing(), name, uri) == real.get_experiment_by_name(name).experiment_id

    class Broken(Racing):
        def get_experiment_by_name(self, n):
            return None

        def create_experiment(self, n, artifact_location=None):
            raise MlflowException("store is down")

    with pytest.raises(MlflowException, match="store is down"):
        _experiment_id(Broken(), name + "-broken", uri)
