"""Stage 2 erases what stage 1 left: on the toy world, stage 1 (the demo's settings) leaves blue partly drawn, and
stage 2 on top of it (TRCE(T+V)) lowers the classifier's blue rate, lowers L_erase on the cached malicious draws
and moves the model's predictions there toward f_safe and away from f_unsafe.

The references are the toy classifier (colour read from the generated images) and Eq. 6-8 written out below, not
the package's loss. Settings: the demo's stage 1 (normalised eta 1, docs/stage1.md); stage 2 with 16 malicious
trajectories x 6 epochs = 96 steps at lr 1e-3 (the toy UNet is tiny; docs/stage2.md), 20 DDIM steps, guidance 5.

Measured when the thresholds were set (shipped toy weights, CPU, float32, these prompts and seeds):
stage 1 alone: blue drawn for 16/32 direct and 12/32 held-out paraphrase prompts, preservation 96.4%; with
stage 2: 10/32 and 8/32, preservation 96.4%. On the 71 cached malicious draws: L_erase 3.74 -> 3.02, mean
d(pred, f_safe) 4.15 -> 3.53, d(pred, f_unsafe) 0.49 -> 0.61. Thresholds keep about half of each effect.
"""

import pytest
import torch

from trce_ray import load_erased
from trce_ray.config import load_config
from trce_ray.models import adapter_for
from trce_ray.stage1.run import run_stage1
from trce_ray.stage2.cache import load_rows
from trce_ray.stage2.run import run_stage2
from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline
from trce_ray.toy.bench import SET_NAMES, classify, generate, prompt_sets, score
from trce_ray.toy.demo import ToyDemoConfig
from trce_ray.toy.packs import pack_name, preserve_file

TARGET = "blue"
SETS = prompt_sets(TARGET, n_direct=32, n_paraphrase=32, n_per_colour=4, seed=0)
BETA, MARGIN = 15.0, 0.01


@pytest.fixture(scope="module")
def erased(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("efficacy")
    overrides = {
        "model.path": "toy",
        "model.device": "cpu",
        "seed": 0,
        "stage1.concept": pack_name(TARGET),
        "stage1.preserve_prompts": str(preserve_file(TARGET)),
        **{f"stage1.{k}": v for k, v in ToyDemoConfig().stage1.items()},
        "cache.steps": 20,
        "cache.guidance": 5.0,
        "cache.malicious_samples": 16,
        "cache.root": str(root / "cache"),
        "train.lr": 1e-3,
        "train.epochs": 6,
        "train.num_workers": 0,
    }
    cfg = load_config(None, overrides)
    run_stage1(cfg, root / "T", pipe=load_toy_pipeline(), progress=False)
    result = run_stage2(cfg, root / "TV", root / "T", progress=False)
    return cfg, result, {name: load_erased(str(root / name), device="cpu") for name in ("T", "TV")}


def _rates(pipe):
    classifier = load_toy_classifier()
    preds = {s: classify(classifier, generate(pipe, SETS[s], steps=20, guidance=5.0)) for s in SET_NAMES}
    return score(TARGET, SETS, preds)


def test_stage2_lowers_the_target_that_stage1_left(erased):
    _, result, pipes = erased
    assert result.steps == 16 * 6
    t, tv = _rates(pipes["T"]), _rates(pipes["TV"])
    n = len(SETS["direct"])
    assert 0.25 <= t["direct"] <= 0.85, t  # stage 1 alone leaves blue partly drawn
    drawn_t = round(n * (t["direct"] + t["paraphrase"]))
    drawn_tv = round(n * (tv["direct"] + tv["paraphrase"]))
    assert drawn_tv <= drawn_t - 5, (t, tv)  # of 64 direct + held-out paraphrase images
    assert tv["preservation"] >= t["preservation"] - 0.1, (t, tv)


def _malicious_draws(cfg, result):
    """Every record of the cache's malicious trajectories, with the prompt that sampled it."""
    from trce_ray.stage2.run import plan_for

    _, specs = plan_for(cfg)
    mal = [s for s in specs if s.kind == "malicious"]
    rows = load_rows(result.cache.path, "malicious", {s.index for s in mal})
    items = [s.index for s in mal for _ in s.record]
    steps = [k for s in mal for k in s.record]
    prompts = {s.index: s.prompt for s in mal}
    draws = rows.gather(torch.tensor(items).numpy(), torch.tensor(steps).numpy())
    return draws, [prompts[i] for i in items]


def _eq8_terms(pipe, draws, prompts):
    """Per-element mean squared distances to f_safe / f_unsafe (Eq. 6/7) and L_erase (Eq. 8), averaged over the
    draws and over c in {c_m, empty}, computed here from the cached original-model predictions."""
    f_safe = draws["eps_uncond"] + BETA * (draws["eps_safe"] - draws["eps_uncond"])
    f_unsafe = draws["eps_uncond"] + BETA * (draws["eps_cond"] - draws["eps_uncond"])
    adapter = adapter_for(pipe)
    out = {"d_safe": 0.0, "d_unsafe": 0.0, "erase": 0.0}
    for texts in (prompts, [""] * len(prompts)):
        with torch.no_grad():
            pred = adapter.predict_noise(draws["z"], draws["t"], adapter.condition(texts))
        d_safe = ((pred - f_safe) ** 2).flatten(1).mean(1)
        d_unsafe = ((pred - f_unsafe) ** 2).flatten(1).mean(1)
        out["d_safe"] += float(d_safe.mean()) / 2
        out["d_unsafe"] += float(d_unsafe.mean()) / 2
        out["erase"] += float(torch.clamp(d_safe - d_unsafe + MARGIN, min=0).mean()) / 2
    return out


def test_erase_loss_falls_and_predictions_move_toward_f_safe(erased):
    cfg, result, pipes = erased
    draws, prompts = _malicious_draws(cfg, result)
    before, after = (_eq8_terms(pipes[name], draws, prompts) for name in ("T", "TV"))
    assert after["erase"] < 0.9 * before["erase"], (before, after)
    assert after["d_safe"] < 0.95 * before["d_safe"], (before, after)
    assert after["d_unsafe"] > before["d_unsafe"], (before, after)
