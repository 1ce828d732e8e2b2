"""Erased SDXL, SD3 and FLUX models: `load_erased` rebuilds them bit for bit from an erase folder, and `trce-ray eval`
generates (the family's own guidance) and scores them."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from trce_ray import load_erased
from trce_ray.cli import main
from trce_ray.config import load_config
from trce_ray.models import adapter_for
from trce_ray.models.tiny import tiny_pipeline
from trce_ray.stage1.run import run_stage1

STAGE1 = {
    "sdxl": {"stage1.pooled": True, "stage1.blocks": "all"},
    "sd3": {"stage1.pooled": True, "stage1.ridge": 1e-3},
    "flux": {},  # context_embedder + pooled projection by default
}


@pytest.fixture(scope="module")
def erased(tmp_path_factory):
    """family -> (base model folder, stage-1 erase folder), built once."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for family, extra in STAGE1.items():
        base, pipe = root / family, tiny_pipeline(family)
        pipe.save_pretrained(base)
        overrides = {"model.path": str(base), "stage1.concept": "sexual", "stage1.templates": 2}
        overrides |= {"stage1.synonyms": 3, "stage1.preserve_count": 40, "tracking.enabled": False, **extra}
        run_stage1(load_config(overrides=overrides), root / f"{family}-erased", pipe=pipe, progress=False)
        out[family] = (base, root / f"{family}-erased")
    return out


@pytest.mark.parametrize("family", list(STAGE1))
def test_load_erased_round_trip_is_bitwise(erased, family):
    base_dir, erase_dir = erased[family]
    delta = load_file(erase_dir / "stage1.safetensors")
    pipe = load_erased(str(erase_dir), device="cpu")
    folder = "unet" if family == "sdxl" else "transformer"
    ref = load_file(base_dir / folder / "diffusion_pytorch_model.safetensors")  # the base weights as saved
    den = adapter_for(pipe).denoiser.state_dict()
    assert set(den) == set(ref) and set(delta) < set(ref)
    assert all(torch.equal(den[k], delta[k]) for k in delta)
    assert all(torch.equal(den[k], ref[k]) for k in ref if k not in delta)
    assert all(not torch.equal(den[k], ref[k]) for k in delta)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_eval_generates_and_scores(ray_cluster, erased, family, tmp_path):
    _, erase_dir = erased[family]
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(erase_dir), "--sets", "ring-a-bell", "--limit", "2", "--steps", "2"]
    argv += ["--set", "eval.height=32", "--set", "eval.width=32", "--batch-size", "2", "--output", str(out)]
    assert main(argv + ["--no-progress", "--set", "tracking.enabled=false"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["generated_images"] == 2 and result["metrics"]["images/ring-a-bell"] == 2
    with open(out / "results" / "ring-a-bell.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    flags = [int(r["nudenet_flagged"]) for r in rows]
    assert len(flags) == 2 and result["metrics"]["asr/ring-a-bell"] == pytest.approx(np.mean(flags))
    # the images are the erased pipeline's own, called the family's way with the same seeds (42, 42)
    pipe = load_erased(str(erase_dir), device="cpu")
    if family == "flux":  # no guidance embedding: true CFG against "", at the adapter's T5 length
        guidance = {"true_cfg_scale": 7.5, "negative_prompt": ["", ""], "max_sequence_length": 256}
    else:
        guidance = {"guidance_scale": 7.5}
    generators = [torch.Generator("cpu").manual_seed(42) for _ in rows]
    with torch.inference_mode():
        expected = pipe(
            [r["prompt"] for r in rows], num_inference_steps=2, height=32, width=32, **guidance, generator=generators
        ).images
    for row, image in zip(rows, expected):
        diff = np.abs(pixels(Path(row["image"])) - np.asarray(image, dtype=np.int16))
        assert diff.max() <= 1 and diff.mean() < 0.01  # batched float math may flip a rounding
