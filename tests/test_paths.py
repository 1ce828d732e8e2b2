"""The one path rule (trce_ray/config/paths.py): every path made absolute where the command is issued, and a Ray
job's temporary folder refused for what a command writes unless allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from trce_ray.cli import main
from trce_ray.config import load_config
from trce_ray.config.paths import absolute, check_job_paths, job_folder, written_paths
from trce_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PRESERVE = "trce_ray/toy/prompts/preserve-red.txt"


def test_relative_paths_become_absolute_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "erase.txt").write_text("a [red] square\n")
    cfg = load_config(
        overrides={
            "model.path": "toy",
            "stage1.concept": "toy-red",
            "stage1.preserve_prompts": PRESERVE,
            "output": "runs/x",
            "eval.deltas": ["runs/a", "/abs/b"],
            "eval.prompt_files": {"mma": "data/mma.csv"},
            "eval.clip_model": "openai/clip-vit-base-patch32",
            "sweep.grid": {"stage1.preserve_prompts": [PRESERVE, str(tmp_path / "erase.txt")], "stage1.eta": [1]},
        }
    )
    assert cfg.output == str(ROOT / "runs" / "x")
    assert cfg.cache.root == str(ROOT / "trce-cache")  # the default, too
    assert cfg.stage1.preserve_prompts == str(ROOT / PRESERVE)
    assert cfg.eval.deltas == [str(ROOT / "runs" / "a"), "/abs/b"]
    assert cfg.eval.prompt_files == {"mma": str(ROOT / "data" / "mma.csv")}
    assert cfg.sweep.grid["stage1.preserve_prompts"] == [str(ROOT / PRESERVE), str(tmp_path / "erase.txt")]
    assert cfg.sweep.grid["stage1.eta"] == [1]
    # names that are not paths stay names: the toy alias, a built-in pack, a hub id
    assert (cfg.model.path, cfg.stage1.concept, cfg.eval.clip_model) == (
        "toy",
        "toy-red",
        "openai/clip-vit-base-patch32",
    )
    assert cfg.tracking.uri == f"sqlite:///{ROOT / 'mlflow.db'}"


def test_tracking_uri_comes_from_the_environment_when_set_and_relative_sqlite_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert load_config(overrides={"model.path": "toy"}).tracking.uri == "http://127.0.0.1:5999"
    cfg = load_config(overrides={"model.path": "toy", "tracking.uri": "sqlite:///store/m.db"})
    assert cfg.tracking.uri == f"sqlite:///{tmp_path / 'store' / 'm.db'}"
    assert absolute("~/x") == str(Path.home() / "x")


def test_a_path_is_resolved_once_where_the_command_is_issued(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(overrides={"model.path": "toy", "output": "out"})
    monkeypatch.chdir(ROOT)  # a worker elsewhere revalidates the same data: nothing moves
    from trce_ray.config import TRCEConfig

    assert TRCEConfig.model_validate(cfg.model_dump(mode="json")).output == str(tmp_path / "out")


def _job_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    (folder / "jobs").mkdir(parents=True)
    return folder


def test_job_folder_is_found_from_any_folder_below_it(tmp_path):
    folder = _job_dir(tmp_path)
    assert job_folder(folder) == folder.resolve() and job_folder(folder / "jobs") == folder.resolve()
    assert job_folder(tmp_path) is None


def test_inside_a_job_outputs_in_its_temporary_folder_are_refused_unless_allowed(tmp_path, monkeypatch):
    folder = _job_dir(tmp_path)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    shared = tmp_path / "shared"
    cfg = load_config(overrides={"model.path": "toy", "output": "runs/x", "tracking.uri": f"sqlite:///{shared}/m.db"})
    with pytest.raises(ConfigError, match=r"^output .*runs/x is inside this Ray job's temporary folder"):
        check_job_paths(written_paths(cfg), cfg.allow_job_local_paths)
    check_job_paths(written_paths(cfg), allowed=True)  # the explicit setting accepts it
    ok = load_config(overrides={"model.path": "toy", "output": str(shared / "x")})  # default MLflow db: in the job
    with pytest.raises(ConfigError, match=r"^cache.root .*/trce-cache is inside"):  # the default cache, too
        check_job_paths(written_paths(ok))
    with pytest.raises(ConfigError, match=r"^tracking.uri .*mlflow.db is inside"):
        check_job_paths(written_paths(ok, ("output",)))
    off = load_config(overrides={"model.path": "toy", "output": str(shared / "x"), "tracking.enabled": False})
    check_job_paths(written_paths(off, ("output",)))  # nothing written in the job folder
    assert "cache.root" not in written_paths(off, ("output",))


def test_the_cli_refuses_a_job_local_output_with_one_sentence_and_the_flag_allows_it(tmp_path, monkeypatch, capsys):
    folder = _job_dir(tmp_path)
    monkeypatch.chdir(folder)
    args = ["erase", "--model", "toy", "--concept", "toy-red", "--templates", "1", "--synonyms", "1"]
    args += ["--set", "stage1.preserve_count=4", "--no-tracking", "--output", "out"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "inside this Ray job's temporary folder" in err, err
    assert not (folder / "out").exists()
    assert main([*args, "--allow-job-local-paths"]) == 0
    assert (folder / "out" / "stage1.safetensors").is_file()
    cfg = (folder / "out" / "config.yaml").read_text()
    assert f"output: {folder / 'out'}" in cfg  # the recorded config holds the absolute path


def test_names_files_of_several_concepts_and_retain_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "names").mkdir()
    for name in ("a.txt", "b.txt", "keep.txt"):
        (tmp_path / "names" / name).write_text("Jane Doe\n")
    cfg = load_config(
        overrides={
            "model.path": "toy",
            "stage1.concepts": ["toy-red", "names/a.txt", {"names": "names/b.txt", "family": "artist"}],
            "stage1.retain": "names/keep.txt",
        }
    )
    concepts = [c if isinstance(c, str) else c.names for c in cfg.stage1.concepts]
    assert concepts == ["toy-red", str(tmp_path / "names" / "a.txt"), str(tmp_path / "names" / "b.txt")]
    assert cfg.stage1.retain == str(tmp_path / "names" / "keep.txt")
