"""Issue 16, in-process: outputs are never clobbered or left half-written, erase folders refuse other base weights,
damaged caches are rebuilt, and each bad input is one sentence. (Real processes: test_reliability_processes.py.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from trce_ray import load_erased
from trce_ray.cli import main
from trce_ray.config import load_config
from trce_ray.errors import TRCEError

SMALL = ["--templates", "2", "--synonyms", "3", "--set", "stage1.preserve_count=20"]
MARKER = ".trce-ray-output.json"


def _leftovers(parent: Path, name: str) -> list[str]:
    """Hidden partial folders or lock files of `name` in `parent` (none may survive a command)."""
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one sentence, no traceback
    return err


@pytest.fixture(scope="module")
def erased(tiny_sd_dir, tmp_path_factory):
    """One stage-1 erase folder of the tiny model, made once (read-only for the tests)."""
    out = tmp_path_factory.mktemp("rel") / "erased"
    assert main(["erase", "--model", str(tiny_sd_dir), "--concept", "sexual", "--output", str(out), *SMALL]) == 0
    return out


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


# ---- outputs: --overwrite, file targets, '.', read-only, stale partials ----------------------------------------
def test_overwrite_refuses_a_folder_with_a_file_trce_ray_did_not_write(erased, tiny_sd_dir, tmp_path, capsys):
    out = _copy(erased, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    before = (out / "stage1.safetensors").read_bytes()
    argv = ["erase", "--model", str(tiny_sd_dir), "--concept", "sexual", "--output", str(out), "--overwrite"]
    assert main([*argv, "--eta", "0.5", *SMALL]) == 2
    assert "holds 1 file(s) trce-ray did not write (notes.txt)" in _err(capsys)
    assert (out / "notes.txt").read_text() == "mine" and (out / "stage1.safetensors").read_bytes() == before
    assert _leftovers(tmp_path, "run") == []

    (out / "notes.txt").unlink()  # now only trce-ray's files: replaced, nothing hidden left beside it
    assert main([*argv, "--eta", "0.5", *SMALL]) == 0
    assert load_config(out / "config.yaml").stage1.eta == 0.5 and (out / MARKER).is_file()
    assert _leftovers(tmp_path, "run") == []


def test_overwrite_refuses_foreign_folders_files_and_the_working_directory(tiny_sd_dir, tmp_path, monkeypatch, capsys):
    argv = ["erase", "--model", str(tiny_sd_dir), "--concept", "sexual", "--overwrite", *SMALL, "--output"]
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "a.jpg").write_bytes(b"x")
    assert main([*argv, str(mine)]) == 2
    assert "was not written by trce-ray" in _err(capsys) and (mine / "a.jpg").read_bytes() == b"x"

    target = tmp_path / "report.pdf"
    target.write_bytes(b"%PDF")
    assert main([*argv, str(target)]) == 2
    assert "is a file, not an output folder" in _err(capsys) and target.read_bytes() == b"%PDF"

    monkeypatch.chdir(mine)
    for where in (".", ".."):
        assert main([*argv, where]) == 2
        assert "the working directory or a folder above it" in _err(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "report.pdf"]  # no ..partial-*, no lock
    assert [p.name for p in mine.iterdir()] == ["a.jpg"]


def test_read_only_output_is_one_sentence(tiny_sd_dir, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()

    def read_only(real):  # the tests may run as root, whom permission bits do not stop: the kernel's answer
        def call(path, *a, **k):
            if str(path).startswith(str(ro)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real(path, *a, **k)

        return call

    monkeypatch.setattr(os, "open", read_only(os.open))
    monkeypatch.setattr(os, "mkdir", read_only(os.mkdir))
    out = ro / "run"
    assert main(["erase", "--model", str(tiny_sd_dir), "--concept", "sexual", "--output", str(out), *SMALL]) == 2
    assert f"cannot write output {out}: Read-only file system" in _err(capsys)
    assert list(ro.iterdir()) == []


def test_a_killed_runs_partial_folder_is_removed_by_the_next_run(tiny_sd_dir, tmp_path):
    stale = tmp_path / ".run.partial-deadbeef"  # what SIGKILL between mkdir and rename leaves
    stale.mkdir()
    (stale / "stage1.safetensors").write_bytes(b"half")
    out = tmp_path / "run"
    assert main(["erase", "--model", str(tiny_sd_dir), "--concept", "sexual", "--output", str(out), *SMALL]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_eval_refuses_an_existing_output_without_resume_or_overwrite(erased, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    argv = ["eval", "--model", str(erased), "--sets", "ring-a-bell", "--no-tracking", "--output", str(out)]
    assert main(argv) == 2
    assert "already exists; pass --resume to continue that evaluation, --overwrite" in _err(capsys)
    assert main([*argv, "--overwrite"]) == 2  # no marker: not an eval folder trce-ray wrote
    assert "was not written by trce-ray" in _err(capsys)
    assert [p.name for p in out.iterdir()] == ["metrics.json"]


# ---- base-model fingerprints -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_model(tiny_sd_dir, tmp_path_factory):
    """The tiny model with one UNet weight changed: same shapes, other weights."""
    dest = _copy(tiny_sd_dir, tmp_path_factory.mktemp("other") / "tiny-edited")
    f = dest / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(f)
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, f)
    return dest


def _point_at(folder: Path, model: Path) -> None:
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg["model"]["path"] = str(model)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_erase_folder_refuses_a_base_model_with_other_weights(erased, other_model, tiny_sd_dir, tmp_path, capsys):
    from trce_ray.stage2.run import check_stage1_dir

    folder = _copy(erased, tmp_path / "edited")
    _point_at(folder, other_model)
    with pytest.raises(TRCEError, match=r"was made from a base model with fingerprint \w{12}, but .* has \w{12}"):
        load_erased(str(folder), device="cpu")
    argv = ["eval", "--model", str(folder), "--sets", "ring-a-bell", "--no-tracking", "--output", str(tmp_path / "e")]
    assert main(argv) == 2
    assert "was made from a base model with fingerprint" in _err(capsys) and not (tmp_path / "e").exists()
    cfg = load_config(folder / "config.yaml")
    with pytest.raises(TRCEError, match="was made from a base model with fingerprint"):
        check_stage1_dir(cfg, folder)  # what `train --stage1` checks before anything runs

    # the escape hatch applies it anyway; a byte-identical copy elsewhere is the same model
    assert load_erased(str(folder), device="cpu", check_base=False) is not None
    _point_at(folder, _copy(tiny_sd_dir, tmp_path / "moved-model"))
    pipe = load_erased(str(folder), device="cpu")
    delta = load_file(folder / "stage1.safetensors")
    name = next(iter(delta))
    assert torch.equal(dict(pipe.unet.named_parameters())[name], delta[name])


def test_relative_stage1_path_is_resolved_where_the_command_is_issued(erased, tmp_path, monkeypatch):
    from trce_ray.stage2.run import check_stage1_dir

    monkeypatch.chdir(erased.parent)
    found = check_stage1_dir(load_config(erased / "config.yaml"), Path(erased.name))
    assert found.is_absolute() and found == erased.resolve()  # what the Ray Train workers are given


# ---- damaged artifacts, bad inputs ------------------------------------------------------------------------------
def test_truncated_delta_is_one_sentence_naming_the_file(erased, tmp_path, capsys):
    from trce_ray.stage2.run import check_stage1_dir

    folder = _copy(erased, tmp_path / "cut")
    delta = folder / "stage1.safetensors"
    delta.write_bytes(delta.read_bytes()[: delta.stat().st_size // 2])
    message = f"{delta} is not a readable safetensors file"
    with pytest.raises(TRCEError, match="not a readable safetensors file") as err:
        load_erased(str(folder), device="cpu")
    assert str(delta) in str(err.value) and "truncated" in str(err.value)
    with pytest.raises(TRCEError) as err:
        check_stage1_dir(load_config(folder / "config.yaml"), folder)
    assert message in str(err.value) and "resume" not in str(err.value)
    argv = ["eval", "--model", str(folder), "--sets", "ring-a-bell", "--no-tracking", "--output", str(tmp_path / "e")]
    assert main(argv) == 2
    assert message in _err(capsys)


def test_bad_inputs_are_one_sentence_and_write_nothing(tiny_sd_dir, tmp_path, capsys):
    filler = " ".join(["very"] * 80)
    erase, target = tmp_path / "e.txt", tmp_path / "t.txt"
    erase.write_text(f"a photo of {filler} [nude] people\na [naked] person\n")
    target.write_text(f"a photo of {filler} [dressed] people\na [dressed] person\n")
    no_unet = _copy(tiny_sd_dir, tmp_path / "no-unet")
    shutil.rmtree(no_unet / "unet")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "new" / "out"  # its parent is made for the lock, and removed again
    model = ["--model", str(tiny_sd_dir)]
    pairs = ["--erase-prompts", str(erase), "--target-prompts", str(target)]
    cases = [
        (["erase", *model, *pairs, "--token", "key"], "has its [keyword] past token 77"),
        (["erase", *model, "--concept", "sexual", "--eta", "inf"], "config field 'stage1.eta'"),
        (["erase", "--model", str(no_unet), "--concept", "sexual"], "lists component 'unet'"),
        (
            ["cache", *model, "--concept", "sexual", "--cache-root", str(tmp_path / "afile")],
            "is a file; give a folder",
        ),
        (["train", "--stage1", str(tmp_path / "nonexistent")], "is not a folder; give a stage-1 output folder"),
    ]
    for argv, message in cases:
        assert main([*argv, "--output", str(out), "--no-tracking"]) == 2, argv
        assert message in _err(capsys), argv
        assert not (tmp_path / "new").exists()
    assert (tmp_path / "afile").read_text() == "x"


def test_long_prompts_and_a_destroyed_model_warn_once(tmp_path, capsys):
    keep = tmp_path / "keep.txt"
    keep.write_text("a blue cube\na green ball\n" + "a yellow cone " * 30 + "\n")
    argv = ["erase", "--model", "toy", "--concept", "toy-red", "--preserve-prompts", str(keep), "--eta", "1e-30"]
    assert main([*argv, "--no-tracking", "--output", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.splitlines()
    long = [line for line in err if "longer than the text encoder's 77 tokens" in line]
    assert len(long) == 1 and long[0].startswith("trce-ray erase: warning: 1 of ") and "preserve prompt" in long[0]
    destroyed = [line for line in err if "preserve drift" in line]
    assert len(destroyed) == 1 and "stage1.eta 1e-30 is too small" in destroyed[0]
    assert json.loads((tmp_path / "out" / "stage1_summary.json").read_text())["preserve_drift"] >= 1.0


def test_pickle_base_model_needs_the_users_consent_with_a_sentence_that_says_how(tiny_sd_dir, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    pickled = tmp_path / "pickled"
    StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir)).save_pretrained(pickled, safe_serialization=False)
    out = tmp_path / "erased"
    argv = ["erase", "--model", str(pickled), "--concept", "sexual", "--allow-pickle", "--no-tracking", *SMALL]
    assert main([*argv, "--output", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["allow_pickle"] is True
    with pytest.raises(TRCEError, match="pass --allow-pickle") as err:
        load_erased(str(out), device="cpu")
    assert "model.allow_pickle: true" not in str(err.value)  # the folder's config has it; that is not consent
    assert load_erased(str(out), device="cpu", allow_pickle=True) is not None


def test_sweep_metric_that_no_trial_measured_is_one_sentence(tmp_path, monkeypatch, capsys):
    import trce_ray.sweep as sweep

    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.md").write_text("table\n")
    rows = [{"trial": "eta=0.1", "stage1.eta": 0.1, "toy/direct": 0.25, "toy/preserve": 0.9, "error": ""}]
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: sweep.SweepResult(out, rows, None))
    argv = ["sweep", "--model", "toy", "--concept", "toy-red", "--grid", "stage1.eta=0.1", "--suite", "toy"]
    assert main([*argv, "--metric", "toy/nope", "--no-tracking", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--metric toy/nope is none of the trials' metrics (toy/direct, toy/preserve" in err


# ---- Ray: a named cluster that cannot be reached ----------------------------------------------------------------
def test_unreachable_or_dashboard_ray_address_is_one_sentence(monkeypatch):
    import ray

    from trce_ray.ray_runtime import _join

    monkeypatch.setenv("TRCE_RAY_CONNECT_TIMEOUT", "2")
    t0 = time.monotonic()
    with pytest.raises(TRCEError, match=r"cannot reach the Ray cluster at RAY_ADDRESS=127\.0\.0\.1:1 "):
        _join(ray, "127.0.0.1:1")
    assert time.monotonic() - t0 < 10
    with pytest.raises(TRCEError, match="is a dashboard URL, which only `ray job submit` takes"):
        _join(ray, "http://127.0.0.1:8265")


# ---- trajectory cache: damaged shards, ls and prune ------------------------------------------------------------
def test_damaged_cache_shard_is_sampled_again_then_listed_and_pruned(tmp_path, tiny_sd_dir, ray_cluster, capsys):
    import numpy as np

    from trce_ray.stage2.cache import build_cache
    from trce_ray.stage2.plan import make_plan
    from trce_ray.stage2.shards import read_shard

    from .test_stage2_units import PAIRS, stage2_config

    cfg = stage2_config(tmp_path, tiny_sd_dir, **{"cache.steps": 4, "cache.shard_size": 4})
    _, specs = make_plan(cfg, PAIRS)
    first = build_cache(cfg, specs, progress=False)
    shards = sorted((first.path / "shards").glob("*.parquet"))
    before = {p.name: read_shard(p) for p in shards}
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert all(s["bytes"] > 0 and len(s["sha256"]) == 64 for s in manifest["shards"])

    shards[0].unlink()  # deleted after completion: the manifest still lists it
    data = bytearray(shards[1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # damaged in place: same size, other content
    shards[1].write_bytes(bytes(data))
    again = build_cache(cfg, specs, progress=False)
    assert not again.reused and again.shards_built == 2 and again.path == first.path
    assert "2 shard(s) missing or damaged" in capsys.readouterr().err
    for p in shards[:2]:
        assert all(np.array_equal(before[p.name][k], v) for k, v in read_shard(p).items())
    assert build_cache(cfg, specs, progress=False).reused

    root = str(cfg.cache.root)
    assert main(["cache", "ls", "--cache-root", root]) == 0
    listing = capsys.readouterr().out
    assert first.path.name in listing and "complete" in listing and str(tiny_sd_dir) in listing
    assert "4 steps" in listing and "1 caches" in listing
    assert main(["cache", "prune", "--cache-root", root, "--older-than", "1d"]) == 0
    assert "deleted 0 caches" in capsys.readouterr().out and first.path.is_dir()  # used a moment ago
    assert main(["cache", "prune", "--cache-root", root, "--max-size", "1K", "--dry-run"]) == 0
    assert "would delete 1 caches" in capsys.readouterr().out and first.path.is_dir()
    assert main(["cache", "prune", "--cache-root", root, "--max-size", "1K"]) == 0
    assert "deleted 1 caches" in capsys.readouterr().out and not first.path.exists()
