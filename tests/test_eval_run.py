"""`trce-ray eval` on Ray Data with a tiny erased model: images, scores, metrics, resume, a killed actor."""

import csv
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from trce_ray.cli import main
from trce_ray.config import load_config
from trce_ray.evaluation.generation import ImageGenerator


@pytest.fixture(scope="module")
def erase_dir(tiny_sd_dir, tmp_path_factory):
    """A real stage-1 erase output of the tiny model (small pack so it takes a second)."""
    from trce_ray.stage1.run import run_stage1

    out = tmp_path_factory.mktemp("erase") / "sexual"
    cfg = load_config(
        overrides={
            "model.path": str(tiny_sd_dir),
            "stage1.concept": "sexual",
            "stage1.templates": 2,
            "stage1.synonyms": 3,
            "stage1.preserve_count": 20,
        }
    )
    run_stage1(cfg, out, progress=False)
    return out


class TinyFeatures(torch.nn.Module):
    """A fixed random conv net: uint8 images -> 8 features (the FID feature-network contract)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x.float() / 255.0)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def feature_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "features.pt"
    torch.jit.script(TinyFeatures()).save(str(path))
    return path


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_eval_generates_scores_resumes_and_logs(ray_cluster, erase_dir, tiny_sd_dir, feature_net, tmp_path, capsys):
    from mlflow import MlflowClient

    from trce_ray.evaluation.fid import FidFeatureDetector, frechet_distance
    from trce_ray.evaluation.generation import GenerationSpec

    mine = tmp_path / "mine.txt"
    mine.write_text("a red apple\n\nthe sea at night\n")  # the blank line is a bad row
    out = tmp_path / "eval"
    experiment = "test-eval-run"
    argv = [
        "eval",
        "--model",
        str(erase_dir),
        "--sets",
        "ring-a-bell",
        str(mine),
        "coco-3k",
        "--limit",
        "3",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--fid-features",
        str(feature_net),
        "--output",
        str(out),
        "--experiment",
        experiment,
        "--no-progress",
    ]
    assert main(argv) == 0
    result = json.loads((out / "metrics.json").read_text())
    m = result["metrics"]
    assert result["generated_images"] == 3 + 2 + 3
    assert m["images/ring-a-bell"] == 3 and m["images/mine"] == 2 and m["skipped/mine"] == 1
    skipped = read_csv(out / "skipped.csv")
    assert [(r["set"], r["row"], r["reason"]) for r in skipped] == [("mine", "1", "empty prompt")]

    # Each row once in the index; images are exactly what the erased pipeline makes in-process with those seeds.
    ring_dir = Path(result["sets"]["ring-a-bell"]["image_folder"])
    index = pq.read_table(ring_dir / "index.parquet").to_pylist()
    assert [(r["row"], r["seed"], r["guidance"]) for r in index] == [(0, 42, 7.5), (1, 42, 7.5), (2, 42, 7.5)]
    spec = GenerationSpec(model=str(erase_dir), deltas=(), image_root=str(tmp_path / "x"), steps=2)
    local = ImageGenerator(spec)
    expected = local.generate([r["prompt"] for r in index[:2]], [42, 42], 7.5)
    for rec, image in zip(index[:2], expected):
        diff = np.abs(pixels(ring_dir.parent / rec["relpath"]) - np.asarray(image, dtype=np.int16))
        assert diff.max() <= 1 and diff.mean() < 0.01  # same seeds; batched float math may flip a rounding

    # NudeNet ran on every ring image and the ASR is the mean of the per-prompt flags.
    rows = read_csv(out / "results" / "ring-a-bell.csv")
    assert [r["nudenet_flagged"] in ("0", "1") for r in rows] == [True] * 3
    assert m["asr/ring-a-bell"] == pytest.approx(np.mean([int(r["nudenet_flagged"]) for r in rows]))
    assert m["asr/adv"] == m["asr/ring-a-bell"]  # the only adversarial set here

    # FID_gen: erased vs base model on the same prompts and seeds, recomputed here from the image files.
    coco = read_csv(out / "results" / "coco-3k.csv")
    net = FidFeatureDetector(str(feature_net), None)
    erased_feats = net([Image.open(r["image"]) for r in coco])
    ref_root = [p for p in (out / "images").iterdir() if p.name != ring_dir.parent.name]
    assert len(ref_root) == 1  # the base model's images live under their own generation key
    ref_feats = net([Image.open(ref_root[0] / "coco-3k" / Path(r["image"]).name) for r in coco])
    assert m["fid_gen/coco-3k"] == pytest.approx(frechet_distance(ref_feats, erased_feats), rel=1e-5)
    assert m["fid_gen/coco-3k"] > 0

    # Tracked: a finished run with the metrics, grids and per-prompt CSVs.
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.metrics["asr/ring-a-bell"] == m["asr/ring-a-bell"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "grids")}
    assert logged == {"grids/ring-a-bell.png", "grids/mine.png", "grids/coco-3k.png"}

    # Resume: nothing generated or scored again, same numbers, files untouched.
    before = {p: p.stat().st_mtime_ns for p in ring_dir.glob("*.png")}
    assert main(argv) == 2  # the output exists: continuing it is explicit
    assert "pass --resume to continue that evaluation" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["generated_images"] == 0 and again["metrics"] == m
    assert {p: p.stat().st_mtime_ns for p in ring_dir.glob("*.png")} == before

    # An unreadable real image is one clear error naming the file (raised inside a Ray actor).
    real = tmp_path / "real"
    real.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(real / "a.png")
    (real / "b.png").write_bytes(b"\x89PNG broken")
    capsys.readouterr()
    assert main(argv + ["--resume", "--fid-real-images", str(real)]) == 2
    assert f"image {real / 'b.png'} is unreadable" in capsys.readouterr().err


class DyingGenerator(ImageGenerator):
    """Kills its own process (SIGKILL) right after the third image it writes, once per test."""

    def on_image_written(self, relpath: str) -> None:
        log = self.root / "generation.log"
        with open(log, "a") as f:
            f.write(relpath + "\n")
        marker = self.root / "killed"
        if not marker.exists() and len(log.read_text().splitlines()) == 3:
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_killed_actor_job_completes_with_each_image_generated_once(ray_cluster, tiny_sd_dir, tmp_path):
    import ray.cloudpickle

    from trce_ray.evaluation.runner import run_eval

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    cfg = load_config(
        overrides={
            "model.path": str(tiny_sd_dir),
            "output": str(tmp_path / "eval"),
            "tracking.enabled": False,
            "eval.sets": ["ring-a-bell"],
            "eval.limit": 6,
            "eval.steps": 2,
            "eval.batch_size": 2,
        }
    )
    result = run_eval(cfg, progress=False, generator_cls=DyingGenerator)
    folder = Path(result.sets["ring-a-bell"]["image_folder"])
    assert (folder.parent / "killed").exists()  # the actor really died mid-run
    log = (folder.parent / "generation.log").read_text().splitlines()
    assert sorted(log) == sorted(set(log)) and len(log) == 6  # every image generated exactly once
    assert len(list(folder.glob("*.png"))) == 6 and result.metrics["images/ring-a-bell"] == 6
    assert len(read_csv(tmp_path / "eval" / "results" / "ring-a-bell.csv")) == 6
