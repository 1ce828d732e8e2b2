"""The toy world as a benchmark of the harness: its sets, its classifier as the detector, its metrics, end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from trce_ray.config import EvalConfig, load_config
from trce_ray.evaluation.prompts import load_prompt_set
from trce_ray.toy.suite import ToyDetector, toy_metrics


def test_toy_sets_are_the_toy_benchmarks_rows():
    from trce_ray.toy.bench import prompt_sets
    from trce_ray.toy.demo import ToyDemoConfig
    from trce_ray.toy.world import COLOURS, SHAPES, neighbours

    demo = ToyDemoConfig()
    ref = prompt_sets("blue", demo.n_direct, demo.n_paraphrase, demo.n_per_colour, demo.seed)
    for part in ("direct", "paraphrase", "preservation"):
        ps = load_prompt_set(f"toy-{part}", EvalConfig(toy_target="blue"))
        assert [(r.prompt, r.seed, r.label, r.categories) for r in ps.rows] == [
            (x.prompt, x.seed, COLOURS[x.colour], (SHAPES[x.shape],)) for x in ref[part]
        ]
        assert {r.guidance for r in ps.rows} == {demo.guidance}
    pres = load_prompt_set("toy-preservation", EvalConfig(toy_target="blue"))
    assert {r.label for r in pres.rows if r.role == "neighbour"} == set(neighbours("blue"))


def test_toy_detector_reads_images_as_the_classifier_expects():
    """PNG round trip + the harness's input convention must give the classifier's own answers on renders."""
    from trce_ray.toy.assets import load_toy_classifier
    from trce_ray.toy.world import COLOURS, SHAPES, render, sample_scene

    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng) for _ in range(32)]
    renders = torch.from_numpy(np.stack([render(s) for s in scenes]))
    clf = load_toy_classifier()
    with torch.no_grad():
        f = clf.features(renders)
        want = [
            (COLOURS[c], SHAPES[s])
            for c, s in zip(clf.colour_head(f).argmax(-1).tolist(), clf.shape_head(f).argmax(-1).tolist(), strict=True)
        ]
    pngs = [
        Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
        for x in renders
    ]
    preds, feats = ToyDetector().classify(pngs)
    got = [(p["colour"], p["shape"]) for p in preds]
    assert sum(g == w for g, w in zip(got, want, strict=True)) >= 31
    assert sum(p["colour"] == COLOURS[s.colour] for p, s in zip(preds, scenes, strict=True)) >= 30  # ground truth
    assert feats.shape == (32, clf.feature_dim)


def test_toy_metrics_known_answer():
    def res(label, shape, role, colour, pred_shape):
        return {
            "label": label,
            "categories": (shape,),
            "role": role,
            "toy": json.dumps({"colour": colour, "shape": pred_shape}),
        }

    direct = [res("red", "circle", "target", c, "circle") for c in ("red", "red", "gray", "blue")]
    assert toy_metrics("toy-direct", direct, "red") == {"toy/direct": 0.5}
    pres = [
        res("orange", "circle", "neighbour", "orange", "square"),
        res("orange", "cross", "neighbour", "red", "cross"),
        res("blue", "square", "other", "blue", "square"),
        res("green", "circle", "other", "green", "circle"),
    ]
    assert toy_metrics("toy-preservation", pres, "red") == {
        "toy/preservation": 0.75,
        "toy/neighbours": 0.5,
        "toy/agreement": 0.5,
    }


@pytest.mark.slow
def test_toy_suite_end_to_end_matches_the_toy_benchmark(ray_cluster, tmp_path):
    """Original vs stage-1-erased toy model through `trce-ray eval`; the original's numbers equal the toy
    benchmark's own generate/classify/score on the same rows."""
    from trce_ray.cli import main
    from trce_ray.stage1.run import run_stage1
    from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline
    from trce_ray.toy.bench import classify, generate, prompt_sets, score
    from trce_ray.toy.packs import pack_name, preserve_file

    images = tmp_path / "images"
    common = [
        "--suite",
        "toy",
        "--limit",
        "6",
        "--steps",
        "20",
        "--batch-size",
        "6",
        "--image-dir",
        str(images),
        "--no-tracking",
        "--no-progress",
    ]
    assert main(["eval", "--model", "toy", "--output", str(tmp_path / "original"), *common]) == 0
    original = json.loads((tmp_path / "original" / "metrics.json").read_text())["metrics"]

    sets = {k: v[:6] for k, v in prompt_sets("red", 48, 48, 12, 0).items()}
    pipe, clf = load_toy_pipeline(), load_toy_classifier()
    preds = {k: classify(clf, generate(pipe, rows, steps=20, guidance=5.0)) for k, rows in sets.items()}
    expected = score("red", sets, preds)
    for key in ("direct", "paraphrase", "preservation", "agreement"):
        assert original[f"toy/{key}"] == pytest.approx(expected[key], abs=1 / 6 + 1e-9), key

    from trce_ray.toy.demo import ToyDemoConfig

    stage1 = {f"stage1.{k}": v for k, v in ToyDemoConfig().stage1.items()}  # the demo's TRCE(T) settings
    cfg = load_config(
        overrides={
            "model.path": "toy",
            "stage1.concept": pack_name("red"),
            "stage1.preserve_prompts": str(preserve_file("red")),
            **stage1,
        }
    )
    run_stage1(cfg, tmp_path / "erased-red", progress=False)
    assert main(["eval", "--model", str(tmp_path / "erased-red"), "--output", str(tmp_path / "erased"), *common]) == 0
    erased = json.loads((tmp_path / "erased" / "metrics.json").read_text())
    assert erased["metrics"]["toy/direct"] < original["toy/direct"]  # the erased colour is drawn less often
    assert erased["metrics"]["fid_gen/toy-preservation"] > 0
    assert erased["generated_images"] == 18  # the reference (original) images came from the shared image dir
    report = (tmp_path / "erased" / "report.md").read_text()
    assert "Toy world" in report and "| Direct ↓ | Paraphrase ↓ |" in report
