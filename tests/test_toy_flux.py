"""The FLUX toy: a genuine FluxPipeline trained on the rectified-flow objective, a pure function of its recipe."""

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from trce_ray.cli import main
from trce_ray.errors import ConfigError
from trce_ray.models import adapter_for, load_pipeline
from trce_ray.toy.assets import toy_pipeline_dir
from trce_ray.toy.bench import PromptRow, generate
from trce_ray.toy.flux_train import FluxTrainConfig, flow_pair
from trce_ray.toy.train import CONFIG_FILE, LOG_FILE, PIPELINE_DIR

from .test_toy_train import _weights

TINY = [
    "arch.heads=2",
    "arch.head_dim=16",
    "arch.rope_axes=[4, 6, 6]",
    "arch.double_layers=1",
    "arch.single_layers=1",
    "arch.t5_dim=16",
    "arch.t5_layers=1",
    "arch.t5_heads=2",
    "arch.clip_dim=16",
    "arch.clip_layers=1",
    "arch.clip_heads=2",
    "dataset_size=16",
    "steps=3",
    "batch=4",
    "warmup=2",
    "log_every=1",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny FLUX recipes through the CLI: seeds 7, 7 and 8."""
    root = tmp_path_factory.mktemp("fluxtoy")
    args = ["toy", "train", "--family", "flux", "--no-progress", *(a for item in TINY for a in ("--set", item))]
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        assert main([*args, "--output", str(root / name), "--seed", str(seed)]) == 0
    return root


def test_same_seed_bit_identical_other_seed_different(runs):
    a, b, c = (_weights(runs / name) for name in "abc")
    assert set(a) == set(b) and len(a) > 50
    assert all(torch.equal(a[k], b[k]) for k in a)
    nets = ("transformer", "text_encoder", "text_encoder_2")
    trained = [k for k in a if k.split("/")[1] in nets and a[k].numel() > 16]
    assert len(trained) > 20 and all(not torch.equal(a[k], c[k]) for k in trained)


def test_output_is_a_flux_pipeline_with_the_sd_toys_vae(runs):
    out = runs / "a"
    recipe = FluxTrainConfig.load(out / CONFIG_FILE)
    assert recipe.seed == 7 and recipe.arch.heads == 2 and recipe.steps == 3
    pipe = load_pipeline(str(out / PIPELINE_DIR))
    adapter = adapter_for(pipe)
    assert type(pipe).__name__ == "FluxPipeline" and adapter.family == "flux"
    assert not adapter.guidance_embeds  # classifier-free dropout, not guidance distillation
    assert adapter.max_sequence_length == recipe.arch.t5_length == 32
    assert adapter.latent_shape(32, 32) == (4, 8, 8)  # 16 packed image tokens
    # the SD toy's VAE, bit for bit; only FLUX's latent shift is new (the dataset's mean latent, from the log)
    sd_vae = load_file(str(toy_pipeline_dir() / "vae" / "diffusion_pytorch_model.safetensors"))
    vae = load_file(str(out / PIPELINE_DIR / "vae" / "diffusion_pytorch_model.safetensors"))
    assert set(vae) == set(sd_vae) and all(torch.equal(vae[k], sd_vae[k]) for k in vae)
    log = __import__("json").loads((out / LOG_FILE).read_text())
    assert pipe.vae.config.shift_factor == log["denoiser"]["vae_shift_factor"] != 0
    transformer = load_file(str(out / PIPELINE_DIR / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in transformer.values()} == {torch.float16}


def test_flow_target_is_what_the_flux_sampler_integrates():
    """Euler steps of FLUX's scheduler, fed the exact velocity target, walk the interpolation path down to x0."""
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64), torch.randn(2, 4, 8, 8, generator=gen)
    noise = noise.double()
    sched = FlowMatchEulerDiscreteScheduler()
    steps = 5
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps).tolist())
    x = noise.clone()
    for i, t in enumerate(sched.timesteps):
        sigma = sched.sigmas[i].double()
        xt, v = flow_pair(x0, noise, sigma.expand(2))
        torch.testing.assert_close(x, xt, rtol=0, atol=1e-6)  # the scheduler steps in float32
        x = sched.step(v, t, x).prev_sample
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-6)  # the scheduler steps in float32
    xt, v = flow_pair(x0, noise, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], noise[1]) and torch.equal(v, noise - x0)


@torch.no_grad()
def test_toy_generation_is_true_cfg_euler_from_the_row_seed(runs):
    """The benchmark's FLUX images equal a hand-written sampler: noise from the row's seed, Euler over sigmas
    linspace(1, 1/n, n), true CFG against "" (the model was trained with empty captions), FLUX's latent shift."""
    pipe = load_pipeline(str(runs / "a" / PIPELINE_DIR))
    adapter = adapter_for(pipe)
    rows = [PromptRow("a red circle", 11, 0, 0), PromptRow("a crimson square on the left", 12, 0, 1)]
    steps, guidance = 3, 4.0
    images = generate(pipe, rows, steps=steps, guidance=guidance)
    assert images.shape == (2, 3, 32, 32)
    for row, image in zip(rows, images):
        x = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(row.seed))[None]
        cond, uncond = adapter.condition([row.prompt]), adapter.condition([""])
        sigmas = np.append(np.linspace(1.0, 1 / steps, steps), 0.0)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            t = torch.tensor([float(np.float32(s * 1000))])
            c, u = adapter.predict_noise(x, t, cond), adapter.predict_noise(x, t, uncond)
            x = x + float(s_next - s) * (u + guidance * (c - u))
        vae = pipe.vae
        decoded = vae.decode(x / vae.config.scaling_factor + vae.config.shift_factor).sample.clamp(-1, 1)
        torch.testing.assert_close(image[None], decoded, rtol=0, atol=2e-3)


def test_missing_flux_weights_fail_with_one_sentence(tmp_path, monkeypatch, capsys):
    import trce_ray.toy.assets as assets

    monkeypatch.setattr(assets, "toy_weights_dir", lambda: tmp_path / "weights")
    assert main(["toy", "gates", "--family", "flux", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "FLUX toy model is not in this install" in err and "--family flux" in err and err.count("\n") == 0


def test_bad_recipe_names_the_field():
    with pytest.raises(ConfigError, match="steps"):
        FluxTrainConfig.load(None, {"steps": 0})
    with pytest.raises(ConfigError, match="arch.width"):
        FluxTrainConfig.load(None, {"arch.width": 3})
    with pytest.raises(ConfigError, match="sum to head_dim 48"):
        FluxTrainConfig.load(None, {"arch.head_dim": 48})


def test_shipped_flux_toy_is_float16_on_disk_and_loads_as_a_flux_pipeline():
    from trce_ray.toy.assets import flux_toy_pipeline_dir, load_toy_pipeline

    folder = flux_toy_pipeline_dir()
    stored = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    pipe = load_toy_pipeline(family="flux")
    assert type(pipe).__name__ == "FluxPipeline" and adapter_for(pipe).family == "flux"
    loaded = pipe.transformer.state_dict()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v.float()) for k, v in stored.items())


@pytest.fixture(scope="module")
def flux_demo(tmp_path_factory):
    """The FLUX demo at a reduced size: the original and TRCE(T+V) (stage 1, the trajectory cache, stage 2)."""
    out = tmp_path_factory.mktemp("fluxdemo") / "run"
    small = ["n_direct=8", "n_paraphrase=8", "n_per_colour=1", "steps=8"]
    small += ["stage2.cache.malicious_samples=16", "stage2.train.epochs=1"]  # stage 2 kept short for the suite
    args = ["toy", "demo", "--family", "flux", "--output", str(out), "--rows", "TRCE(T+V)", "--no-tracking"]
    assert main([*args, "--no-progress", *(a for item in small for a in ("--set", item))]) == 0
    return out


def test_flux_demo_erases_red_with_t_plus_v(flux_demo):
    results = json.loads((flux_demo / "results.json").read_text())
    rows = results["rows"]
    assert list(rows) == ["original", "TRCE(T+V)"] and results["config"]["family"] == "flux"
    original, erased = rows["original"], rows["TRCE(T+V)"]
    assert original["direct"] >= 0.75 and original["paraphrase"] >= 0.75  # the FLUX toy draws red when asked
    assert erased["direct"] <= 0.25 and erased["paraphrase"] <= 0.25  # and does not after the erasure
    assert (flux_demo / "TRCE(T+V)" / "stage1.safetensors").is_file()
    assert (flux_demo / "TRCE(T+V)" / "stage2.safetensors").is_file()
    assert (flux_demo / "table.txt").read_text().startswith("FLUX toy")
