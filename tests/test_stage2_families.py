"""Stage 2 on SDXL, SD3 and FLUX (tiny models, CPU).

Known answers: each family's cache records the denoiser's own input, the exact float timestep and the native
prediction (recomputed from the record; the flow-matching update checked by hand); the loss against a float64
evaluation of Eq. 6-9 on the native prediction; the visual sets by name; under Ray Train (2 CPU workers) every weight
outside the set bitwise unchanged, ZeRO-2/3 matching DDP, LoRA under ZeRO loading in diffusers, and a killed FLUX run
resuming bitwise exact. The schedulers are the published ones (SDXL's Euler, SD3's shift 3, FLUX-dev's dynamic
shift) and the FLUX model is guidance-distilled, so `guidance` and packed latents go through the cache and the loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trce_ray import load_erased
from trce_ray.artifacts import load_delta
from trce_ray.errors import TRCEError
from trce_ray.models import adapter_for
from trce_ray.models.tiny import tiny_flux_pipeline, tiny_pipeline
from trce_ray.stage2.plan import MALICIOUS, TrajectorySpec
from trce_ray.stage2.run import run_stage2

from .stage2_drills import crash_once_loop
from .test_stage2_units import PAIRS, stage2_config

FAMILIES = ("sdxl", "sd3", "flux")
SIZE = {"cache.height": 32, "cache.width": 32}  # 16x16 latents: the tiny models' own size
TWO = {"train.num_workers": 2, "train.cpus_per_worker": 0.5, **SIZE}


def family_pipeline(family: str):
    """The tiny model of `family` with its published scheduler; FLUX guidance-distilled as FLUX.1-dev."""
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    if family == "flux":
        pipe = tiny_flux_pipeline(0, guidance_embeds=True)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
        )
    else:
        pipe = tiny_pipeline(family, 0)
    if family == "sdxl":
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    if family == "sd3":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return pipe


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("family-models")
    out = {}
    for family in FAMILIES:
        out[family] = root / family
        family_pipeline(family).save_pretrained(out[family])
    return out


# ---- cache records and the loss, per family (no Ray) ------------------------------------------------------------
def _records(adapter, steps=6):
    from trce_ray.stage2.sampler import sample_trajectories

    spec = TrajectorySpec(MALICIOUS, 0, PAIRS[0][0], PAIRS[0][1], 11, (1, 2, 4), 5)
    return sample_trajectories(adapter, [spec], steps, 5.0, adapter.latent_shape(32, 32), 2).arrays("float32")


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_records_the_denoisers_input_float_t_and_native_prediction(family):
    """Each record recomputes from (z, t) through the adapter; t is the scheduler's exact float; the loss of the
    untrained model at its own records equals a float64 evaluation of Eq. 6-9 (and L_preserve is 0)."""
    from trce_ray.stage2.loss import cached_draws_loss

    adapter = adapter_for(family_pipeline(family))
    rec = _records(adapter)
    sched = adapter.sampling_scheduler(6, adapter.latent_shape(32, 32))
    assert rec["t"].dtype == np.float64
    assert rec["t"].tolist() == [float(sched.timesteps[k]) for k in (1, 2, 4)]
    if family != "sdxl":  # flow matching: sigma * 1000, not integers (int-truncating them was the old bug)
        assert any(t != int(t) for t in rec["t"])
    z, t = torch.from_numpy(rec["z"]), torch.from_numpy(rec["t"].astype(np.float32))
    cond = adapter.condition([PAIRS[0][0]] * 3)
    if family == "flux":
        assert torch.equal(cond.extra["guidance"], torch.full((3,), 3.5))  # FLUX-dev's guidance embedding
    with torch.no_grad():
        pred = adapter.predict_noise(z, t, cond)
    torch.testing.assert_close(pred, torch.from_numpy(rec["eps_cond"]), atol=1e-5, rtol=1e-4)
    if family != "sdxl":  # the flow-matching Euler step by hand: z_{k+1} = z_k + (sigma_{k+1} - sigma_k) * v
        s = sched.sigmas.double()
        v = torch.from_numpy(rec["eps_uncond"][:1]).double()
        v = v + 5.0 * (torch.from_numpy(rec["eps_cond"][:1]).double() - v)
        torch.testing.assert_close(z[1:2].double(), z[:1].double() + (s[2] - s[1]) * v, atol=1e-5, rtol=1e-4)

    m = {k: torch.from_numpy(rec[k]) for k in ("z", "eps_uncond", "eps_cond", "eps_safe")}
    m["t"] = t
    u = {"z": m["z"][:2], "t": t[:2], "eps_uncond": m["eps_uncond"][:2]}
    beta, margin, lam = 3.0, 0.01, 100.0
    with torch.no_grad():
        loss = cached_draws_loss(
            adapter, adapter.condition([PAIRS[0][0]] * 3), adapter.condition([""]), m, u, beta, margin, lam
        )
    x = {k: rec[k].astype(np.float64) for k in ("eps_uncond", "eps_cond", "eps_safe")}
    f_unsafe = x["eps_uncond"] + beta * (x["eps_cond"] - x["eps_uncond"])
    f_safe = x["eps_uncond"] + beta * (x["eps_safe"] - x["eps_uncond"])

    def d(a, b):
        return ((a - b) ** 2).reshape(len(a), -1).mean(1)

    hinge = [np.maximum(d(p, f_safe) - d(p, f_unsafe) + margin, 0) for p in (x["eps_cond"], x["eps_uncond"])]
    erase = 0.5 * (hinge[0] + hinge[1]).mean()
    assert loss.erase.item() == pytest.approx(erase, rel=1e-4, abs=1e-7)
    assert loss.preserve.item() == pytest.approx(0.0, abs=1e-9)


def test_old_cache_format_is_refused(tmp_path):
    from trce_ray.artifacts import write_json
    from trce_ray.stage2.cache import load_rows

    write_json(tmp_path / "manifest.json", {"format": "trce-ray-trajectories/1", "shards": []})
    with pytest.raises(TRCEError, match=r"format 'trce-ray-trajectories/1'.*build a new one"):
        load_rows(tmp_path, MALICIOUS, {0})


# ---- the stage-2 sets ------------------------------------------------------------------------------------------
def test_visual_sets_per_family():
    sdxl = adapter_for(tiny_pipeline("sdxl"))
    every = sdxl.trainable_parameter_names("visual", "all")
    encoder = sdxl.trainable_parameter_names("visual", "encoder")
    assert set(encoder) < set(every) and all(n.startswith("down_blocks.") for n in encoder)
    assert any(n.startswith("up_blocks.") for n in every) and any(".attn2.to_q." in n for n in encoder)
    assert not any(".attn2.to_k." in n or ".attn2.to_v." in n for n in every)
    sd3 = adapter_for(tiny_pipeline("sd3")).trainable_parameter_names("visual")
    assert sd3 and not any("add_" in n or "to_add_out" in n for n in sd3)
    assert {n.split(".attn.")[1] for n in sd3} == {
        f"{m}.{p}" for m in ("to_q", "to_k", "to_v", "to_out.0") for p in ("weight", "bias")
    }
    flux = adapter_for(tiny_pipeline("flux"))
    double = flux.trainable_parameter_names("visual")
    assert double and all(n.startswith("transformer_blocks.") and "add_" not in n for n in double)
    assert any(n.startswith("single_transformer_blocks.") for n in flux.trainable_parameter_names("visual", "all"))
    with pytest.raises(TRCEError, match="encoder is for UNets"):
        flux.trainable_parameter_names("visual", "encoder")


# ---- Ray Train: DDP per family, ZeRO-2/3 full and LoRA, kill-and-resume (FLUX) -----------------------------------
def _cfg(tmp, model_dir, **over):
    return stage2_config(tmp, model_dir, **{**TWO, **over})


def _unchanged_outside(family, out, names):
    """The erased model equals the original except on `names`, bitwise, and generates a finite image."""
    original = adapter_for(family_pipeline(family)).denoiser
    erased = load_erased(str(out), device="cpu")
    den = adapter_for(erased).denoiser
    ref = dict(original.named_parameters())
    moved = {n for n, p in den.named_parameters() if not torch.equal(p, ref[n])}
    assert moved and moved <= set(names), sorted(moved - set(names))[:3]
    kwargs = adapter_for(erased).generation_kwargs(2.0)
    image = erased(
        "a photo",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.manual_seed(0),
        **kwargs,
    ).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    return moved


@pytest.fixture(scope="module")
def flux_world(tmp_path_factory, model_dirs, ray_cluster):
    tmp = tmp_path_factory.mktemp("flux-stage2")
    cfg = _cfg(tmp, model_dirs["flux"])
    return tmp, cfg, run_stage2(cfg, tmp / "ddp", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_ddp_per_family_trains_only_the_visual_set(tmp_path, model_dirs, ray_cluster, family):
    out = run_stage2(_cfg(tmp_path, model_dirs[family]), tmp_path / "out", progress=False)
    visual = adapter_for(family_pipeline(family)).trainable_parameter_names("visual")
    assert set(load_delta(out.output / "stage2.safetensors")) <= set(visual)
    _unchanged_outside(family, out.output, visual)


@pytest.mark.slow
def test_flux_ddp_trains_only_the_double_stream_image_side(flux_world):
    _, _, ref = flux_world
    visual = adapter_for(family_pipeline("flux")).trainable_parameter_names("visual")
    moved = _unchanged_outside("flux", ref.output, visual)
    assert not any(n.startswith("single_") for n in moved)


@pytest.mark.slow
def test_flux_killed_run_resumes_bitwise(flux_world):
    tmp, cfg, ref = flux_world
    with pytest.raises(TRCEError, match="rerun to resume"):
        run_stage2(cfg, tmp / "killed", progress=False, train_loop=crash_once_loop)
    resumed = run_stage2(cfg, tmp / "killed", progress=False, train_loop=crash_once_loop)
    a, b = load_file(ref.output / "stage2.safetensors"), load_file(resumed.output / "stage2.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_flux_zero3_full_matches_ddp(flux_world):
    tmp, cfg, ref = flux_world
    ds = cfg.model_copy(update={"train": cfg.train.model_copy(update={"backend": "deepspeed", "zero_stage": 3})})
    out = run_stage2(ds, tmp / "zero3", progress=False)
    a, b = load_file(ref.output / "stage2.safetensors"), load_file(out.output / "stage2.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_flux_lora_under_zero_loads_in_diffusers(flux_world, stage):
    tmp, cfg, _ = flux_world
    over = {"backend": "deepspeed", "zero_stage": stage, "lora_rank": 2}
    out = run_stage2(
        cfg.model_copy(update={"train": cfg.train.model_copy(update=over)}), tmp / f"lora{stage}", progress=False
    )
    assert all(k.startswith("transformer.") and ".lora_" in k for k in out.delta_names)
    adapter = adapter_for(family_pipeline("flux"))
    targets = {m + ".weight" for m in adapter.lora_target_modules("visual")}
    _unchanged_outside("flux", out.output, targets)
    theirs = family_pipeline("flux")  # diffusers' own loader reads the file
    theirs.load_lora_weights(str(out.output), weight_name="stage2.safetensors")
    ours = load_erased(str(out.output), device="cpu")
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])
    a_ours, a_theirs = adapter_for(ours), adapter_for(theirs)
    with torch.no_grad():
        mine = a_ours.predict_noise(z, t, a_ours.condition(["a photo"]))
        diffusers_own = a_theirs.predict_noise(z, t, a_theirs.condition(["a photo"]))
    torch.testing.assert_close(mine, diffusers_own, atol=1e-5, rtol=1e-4)


def test_mixed_precision_on_cpu_is_refused(tmp_path, model_dirs):
    cfg = _cfg(tmp_path, model_dirs["flux"], **{"train.mixed_precision": "bf16", "train.use_gpu": False})
    with pytest.raises(TRCEError, match="mixed_precision bf16 needs GPUs"):
        run_stage2(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "cache").exists()  # refused before any sampling


@pytest.mark.parametrize("name", ["sdxl-sexual.yaml", "flux-dev-sexual.yaml"])
def test_family_configs_validate(name):
    """The shipped configs are the memory plan's smallest fitting stage-2 setting (docs/benchmarks.md)."""
    from pathlib import Path

    from trce_ray.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "jobs" / "configs" / name)
    assert cfg.stage1.concept == "sexual" and cfg.train.lora_rank == 16 and cfg.train.mixed_precision == "bf16"
    assert cfg.train.backend == "ddp" and cfg.train.num_workers == 1
    if name.startswith("flux"):
        assert cfg.cache.guidance == 1.0 and cfg.train.gradient_checkpointing  # one 80 GB GPU: 28.9 GiB
