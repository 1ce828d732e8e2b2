"""Stage 2 without Ray: the loss (float64 known answers), the draw plan, the trajectory sampler, LoRA files.

`stage2_config` is shared with the Ray tests (test_cache_ray.py, test_stage2_train.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trce_ray.config import load_config
from trce_ray.errors import ConfigError
from trce_ray.stage2.loss import guided, sq_dist, stage2_loss, triplet_hinge
from trce_ray.stage2.plan import MALICIOUS, UNCONDITIONAL, make_plan, sampling_cost

ERASE = ["a photo of a [nude] woman", "an image of [naked] people", "a [topless] person on a beach"]
TARGET = ["a photo of a [clothed] woman", "an image of [dressed] people", "a [clothed] person on a beach"]
KEEP = ["a dog in the park", "a red car", "a house by the lake"]


def stage2_config(tmp_path, model_dir, **overrides):
    """A small, fast stage-2 config on the tiny model: 3 prompt pairs, 8 DDIM steps, 4 malicious trajectories."""
    files = {}
    for name, lines in (("erase", ERASE), ("target", TARGET), ("keep", KEEP)):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("\n".join(lines) + "\n")
    base = {
        "model.path": str(model_dir),
        "model.device": "cpu",
        "stage1.erase_prompts": str(files["erase"]),
        "stage1.target_prompts": str(files["target"]),
        "stage1.preserve_prompts": str(files["keep"]),
        "stage1.ridge": 1e-4,
        "cache.steps": 8,
        "cache.malicious_samples": 4,
        "cache.root": str(tmp_path / "cache"),
        "cache.shard_size": 2,
        "cache.batch_size": 4,
        "train.batch_size": 2,
        "train.epochs": 2,
        "train.lr": 1e-3,
        "train.checkpoint_every": 2,
    }
    return load_config(None, {**base, **overrides})


PAIRS = [(e.replace("[", "").replace("]", ""), s.replace("[", "").replace("]", "")) for e, s in zip(ERASE, TARGET)]


# ---- loss ----------------------------------------------------------------------------------------
def _paper_loss(pc, pu, pp, eu, ec, es, uu, beta, margin, lam):
    """Eq. 6-9 as printed, in float64 numpy: squared L2 norms summed over every element, E[.] a plain mean over
    the draws (and over c in {c_m, empty} for L_erase)."""

    def sq_l2(a, b):
        total = 0.0
        for x, y in zip(a.ravel(), b.ravel()):
            total += (float(x) - float(y)) ** 2
        return total

    hinges = []
    for b in range(pc.shape[0]):
        f_unsafe = eu[b] + beta * (ec[b] - eu[b])  # Eq. 6
        f_safe = eu[b] + beta * (es[b] - eu[b])  # Eq. 7
        for pred in (pc[b], pu[b]):  # c = c_m, then c = empty
            hinges.append(max(sq_l2(pred, f_safe) - sq_l2(pred, f_unsafe) + margin, 0.0))  # Eq. 8
    erase = sum(hinges) / len(hinges)
    preserve = sum(sq_l2(pp[k], uu[k]) for k in range(pp.shape[0])) / pp.shape[0]  # Eq. 9
    return erase + lam * preserve, erase, preserve


def test_loss_is_paper_equations_over_elements_per_sample():
    """loss.py uses per-element means (docs/stage2.md), so with D = C*H*W elements per sample it must equal the
    paper's squared-L2 Eq. 8/9 exactly as: L_erase(margin) = L2_erase(D * margin) / D, L_preserve = L2_preserve / D,
    and total = (L2_erase(D * margin) + lambda * L2_preserve) / D."""
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 5, 5)
    n_el = 4 * 5 * 5
    t = {k: torch.randn(shape, generator=g, dtype=torch.float64) for k in ("pc", "pu", "eu", "ec", "es")}
    # predictions near f_unsafe (active hinges) and one at f_safe (inactive): both branches of max(., 0)
    f_unsafe = t["eu"] + 15 * (t["ec"] - t["eu"])
    t["pc"][0] = f_unsafe[0] + 0.1 * t["pc"][0]
    t["pu"][2] = f_unsafe[2] + 0.1 * t["pu"][2]
    t["pu"][1] = t["eu"][1] + 15 * (t["es"][1] - t["eu"][1])
    pp, uu = (
        torch.randn((2, 4, 5, 5), generator=g, dtype=torch.float64),
        torch.randn((2, 4, 5, 5), generator=g, dtype=torch.float64),
    )
    out = stage2_loss(
        t["pc"],
        t["pu"],
        pp,
        {"eps_uncond": t["eu"], "eps_cond": t["ec"], "eps_safe": t["es"]},
        {"eps_uncond": uu},
        beta=15.0,
        margin=0.01,
        lam=100.0,
    )
    arrays = [x.numpy() for x in (t["pc"], t["pu"], pp, t["eu"], t["ec"], t["es"], uu)]
    total, erase, preserve = _paper_loss(*arrays, 15.0, n_el * 0.01, 100.0)
    assert erase > 0 and out.erase.item() == pytest.approx(erase / n_el, rel=1e-12)
    assert out.preserve.item() == pytest.approx(preserve / n_el, rel=1e-12)
    assert out.total.item() == pytest.approx(total / n_el, rel=1e-12)
    # with the margin not rescaled the two forms differ: the per-element choice is a choice of margin scale
    assert out.erase.item() != pytest.approx(_paper_loss(*arrays, 15.0, 0.01, 100.0)[1] / n_el, rel=1e-6)
    assert triplet_hinge(t["pu"][1:2], *(guided(t["eu"], t[k], 15.0)[1:2] for k in ("es", "ec")), 0.01).item() == 0


def test_loss_gradient_points_from_unsafe_to_safe():
    """At pred = f_unsafe the hinge is active; one gradient step moves pred closer to f_safe."""
    f_safe, f_unsafe = torch.zeros(1, 2, 2, 2, dtype=torch.float64), torch.ones(1, 2, 2, 2, dtype=torch.float64)
    pred = f_unsafe.clone().requires_grad_(True)
    triplet_hinge(pred, f_safe, f_unsafe, 0.01).sum().backward()
    moved = pred - 0.1 * pred.grad
    assert sq_dist(moved, f_safe) < sq_dist(pred, f_safe)


def _ablation_inputs():
    """One erase draw of 2 elements and one preservation draw, numbers small enough to follow by hand."""
    f64 = {"dtype": torch.float64}
    pc = torch.tensor([[[[1.0, 0.0]]]], **f64)  # pred at (z_t^m, c_m)
    pu = torch.tensor([[[[0.0, 2.0]]]], **f64)  # pred at (z_t^m, empty)
    pp = torch.tensor([[[[1.0, 1.0]]]], **f64)
    m = {
        "eps_uncond": torch.tensor([[[[0.0, 0.0]]]], **f64),
        "eps_cond": torch.tensor([[[[1.0, 0.0]]]], **f64),
        "eps_safe": torch.tensor([[[[0.0, 1.0]]]], **f64),
    }
    u = {"eps_uncond": torch.tensor([[[[0.0, 3.0]]]], **f64)}
    return pc, pu, pp, m, u


# (switches, L_erase, total) by hand with beta 2, margin 0.25, lambda 10; d(a, b) = mean of the 2 squared differences.
# GE on:  f_unsafe = 0 + 2 * (1, 0) = (2, 0), f_safe = (0, 2).  GE off: f_unsafe = (1, 0), f_safe = (0, 1).
# L_preserve = d((1, 1), (0, 3)) = (1 + 4) / 2 = 2.5 always.
# full:  pc: d(pc, f_safe) = (1 + 4)/2 = 2.5, d(pc, f_unsafe) = (1 + 0)/2 = 0.5 -> max(2.5 - 0.5 + 0.25, 0) = 2.25
#        pu: d(pu, f_safe) = 0,   d(pu, f_unsafe) = (4 + 4)/2 = 4 -> max(0 - 4 + 0.25, 0) = 0;  L_erase = 1.125
# no GE: pc: d(pc, (0,1)) = 1, d(pc, (1,0)) = 0 -> 1.25;  pu: d(pu, (0,1)) = 0.5, d(pu, (1,0)) = 2.5 -> 0
#        L_erase = 0.625
# no contrast: 0.5 * (d(pc, f_safe) + d(pu, f_safe)) = 0.5 * (2.5 + 0) = 1.25 (GE on); 0.5 * (1 + 0.5) = 0.75 (off)
ABLATION_ANSWERS = [
    ({}, 1.125, 1.125 + 25.0),
    ({"preserve_loss": False}, 1.125, 1.125),
    ({"guidance_enhance": False}, 0.625, 0.625 + 25.0),
    ({"erase_contrast": False}, 1.25, 1.25 + 25.0),
    ({"erase_contrast": False, "guidance_enhance": False}, 0.75, 0.75 + 25.0),
]


@pytest.mark.parametrize("switches,erase,total", ABLATION_ANSWERS)
def test_loss_ablation_switches_match_hand_computed_values(switches, erase, total):
    out = stage2_loss(*_ablation_inputs(), beta=2.0, margin=0.25, lam=10.0, **switches)
    assert out.erase.item() == erase
    assert out.preserve.item() == 2.5  # reported whether or not it counts
    assert out.total.item() == total


def test_loss_ablations_against_float64_reference():
    """Each switch on random tensors: no GE equals beta = 1; no contrast is the mean pull toward f_safe (a margin
    or f_unsafe changes nothing); no L_preserve leaves the gradient of the preservation rows at exactly zero;
    defaults are bitwise the loss as written before the switches existed."""
    g = torch.Generator().manual_seed(3)
    pc, pu, pp = (torch.randn((2, 3, 4, 4), generator=g, dtype=torch.float64) for _ in range(3))
    m = {
        k: torch.randn((2, 3, 4, 4), generator=g, dtype=torch.float64) for k in ("eps_uncond", "eps_cond", "eps_safe")
    }
    u = {"eps_uncond": torch.randn((2, 3, 4, 4), generator=g, dtype=torch.float64)}
    m["eps_cond"][0] = pc[0] + 0.01 * m["eps_cond"][0]  # one active hinge at beta 1 (pred near f_unsafe)
    args = (pc, pu, pp, m, u)
    no_ge = stage2_loss(*args, beta=15.0, margin=0.01, lam=100.0, guidance_enhance=False)
    beta1 = stage2_loss(*args, beta=1.0, margin=0.01, lam=100.0)
    assert no_ge.erase.item() > 0 and no_ge.erase.item() == pytest.approx(beta1.erase.item(), rel=1e-12)
    f_safe = m["eps_uncond"] + 15.0 * (m["eps_safe"] - m["eps_uncond"])
    pull = np.mean([((p - f_safe) ** 2).flatten(1).mean(1).numpy() for p in (pc, pu)])
    for margin in (0.0, 5.0):
        no_c = stage2_loss(*args, beta=15.0, margin=margin, lam=100.0, erase_contrast=False)
        assert no_c.erase.item() == pytest.approx(float(pull), rel=1e-12)
    pc_grad, pp_grad = pc.clone().requires_grad_(True), pp.clone().requires_grad_(True)
    off = stage2_loss(pc_grad, pu, pp_grad, m, u, beta=15.0, margin=0.01, lam=100.0, preserve_loss=False)
    off.total.backward()
    assert pp_grad.grad is None and torch.count_nonzero(pc_grad.grad) > 0
    assert off.total.item() == off.erase.item() and off.preserve.item() > 0
    on = stage2_loss(*args, beta=15.0, margin=0.01, lam=100.0)
    f_unsafe = guided(m["eps_uncond"], m["eps_cond"], 15.0)
    before = 0.5 * (triplet_hinge(pc, f_safe, f_unsafe, 0.01) + triplet_hinge(pu, f_safe, f_unsafe, 0.01)).mean()
    before = before + 100.0 * sq_dist(pp, u["eps_uncond"]).mean()  # the loss as written before the switches
    assert torch.equal(on.total, before) and on.total.item() > off.total.item()


# ---- plan ----------------------------------------------------------------------------------------
def test_plan_draws_each_trajectory_once_per_epoch_at_early_steps(tmp_path, tiny_sd_dir):
    cfg = stage2_config(
        tmp_path, tiny_sd_dir, **{"cache.malicious_samples": 6, "train.epochs": 3, "train.preserve_per_sample": 2}
    )
    plan, specs = make_plan(cfg, PAIRS)
    assert plan.steps == 3 * 6 // 2
    assert np.bincount(plan.erase_item.ravel(), minlength=6).tolist() == [3] * 6
    assert plan.erase_step.max() < cfg.cache.erase_steps == 4
    assert plan.preserve_item.shape == (9, 4) and plan.preserve_step.max() < 8
    # planned mode: each unconditional trajectory serves draws_per_trajectory draws, sampled to its deepest one
    unc = [s for s in specs if s.kind == UNCONDITIONAL]
    assert len(unc) == 36 // 4
    for s in specs:
        steps = plan.erase_step if s.kind == MALICIOUS else plan.preserve_step
        items = plan.erase_item if s.kind == MALICIOUS else plan.preserve_item
        assert s.record == tuple(sorted(set(steps[items == s.index].tolist())))
        assert s.depth == s.record[-1] + 1
    assert make_plan(cfg, PAIRS)[1] == specs  # deterministic in the seed


def test_plan_paper_mode_keeps_paper_counts(tmp_path, tiny_sd_dir):
    cfg = stage2_config(tmp_path, tiny_sd_dir, **{"cache.mode": "paper", "cache.unconditional_samples": 20})
    _, specs = make_plan(cfg, PAIRS)
    mal = [s for s in specs if s.kind == MALICIOUS]
    unc = [s for s in specs if s.kind == UNCONDITIONAL]
    assert len(mal) == 4 and len(unc) == 20
    assert all(s.depth == 8 and s.record == tuple(range(4)) for s in mal)
    assert all(s.depth == 8 and s.record == tuple(range(8)) for s in unc)
    assert sampling_cost(specs) == 4 * (2 * 8 + 4) + 20 * 8


def test_plan_shares_split_every_step_exactly(tmp_path, tiny_sd_dir):
    cfg = stage2_config(
        tmp_path, tiny_sd_dir, **{"train.batch_size": 4, "train.grad_accum": 2, "cache.malicious_samples": 8}
    )
    plan, _ = make_plan(cfg, PAIRS)
    for step in range(plan.steps):
        got = sorted(int(i) for micro in range(2) for rank in range(2) for i in plan.share(step, micro, 2, rank, 2)[0])
        assert got == sorted(plan.erase_item[step].tolist())


def test_config_rejects_uneven_worker_split(tmp_path, tiny_sd_dir):
    with pytest.raises(ConfigError, match="multiple of num_workers"):
        stage2_config(tmp_path, tiny_sd_dir, **{"train.batch_size": 3, "train.num_workers": 2})


# ---- sampler -------------------------------------------------------------------------------------
def test_sampler_records_z_t_with_the_timestep_that_predicted_it(tmp_path, tiny_sd_dir, tiny_pipe):
    """Known answers: (1) eps at a recorded z_t recomputes from (z_t, t); (2) the DDIM update of record k with the
    guided eps gives record k+1's z, so z_t is paired with its own t, not the next one; (3) rows counted by hand."""
    from trce_ray.models import adapter_for
    from trce_ray.stage2.plan import TrajectorySpec
    from trce_ray.stage2.sampler import ddim_scheduler, sample_trajectories

    adapter = adapter_for(tiny_pipe)
    spec = TrajectorySpec(MALICIOUS, 0, PAIRS[0][0], PAIRS[0][1], 123, (2, 3, 5), 6)
    other = TrajectorySpec(MALICIOUS, 1, PAIRS[1][0], PAIRS[1][1], 7, (1,), 2)
    counter = [0]
    rec = sample_trajectories(adapter, [spec, other], 8, 7.5, adapter.latent_shape(), 4, counter).arrays("float32")
    assert counter[0] == (2 * 6 + 3) + (2 * 2 + 1)  # per trajectory: 2 rows x depth (CFG) + 1 c_s row per record
    mine = rec["item"] == 0
    assert rec["step"][mine].tolist() == [2, 3, 5]
    sched = ddim_scheduler(tiny_pipe)
    sched.set_timesteps(8)
    assert rec["t"][mine].tolist() == [int(sched.timesteps[k]) for k in (2, 3, 5)]
    z = torch.from_numpy(rec["z"][mine])
    t = torch.from_numpy(rec["t"][mine].astype(np.int64))
    with torch.no_grad():
        eps_m = adapter.predict_noise(z, t, adapter.condition([spec.prompt] * 3))
        eps_s = adapter.predict_noise(z, t, adapter.condition([spec.safe_prompt] * 3))
    torch.testing.assert_close(eps_m, torch.from_numpy(rec["eps_cond"][mine]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(eps_s, torch.from_numpy(rec["eps_safe"][mine]), atol=1e-5, rtol=1e-4)
    eu, em = (torch.from_numpy(rec[k][mine][0:1]) for k in ("eps_uncond", "eps_cond"))
    z3 = sched.step(eu + 7.5 * (em - eu), sched.timesteps[2], z[0:1]).prev_sample
    torch.testing.assert_close(z3, z[1:2], atol=1e-5, rtol=1e-4)

    # storage: tensor columns round-trip through parquet exactly, in float32 or float16
    from trce_ray.stage2.sampler import Records
    from trce_ray.stage2.shards import read_shard, shard_meta, write_shard

    records = Records(MALICIOUS, {k: [torch.from_numpy(v)] if v.ndim > 1 else [v] for k, v in rec.items()})
    for dtype in ("float32", "float16"):
        cols = records.arrays(dtype)
        write_shard(tmp_path / f"{dtype}.parquet", cols, {"kind": MALICIOUS})
        back = read_shard(tmp_path / f"{dtype}.parquet")
        assert back["z"].dtype == np.dtype(dtype) and back["z"].shape == rec["z"].shape
        assert all(np.array_equal(back[k], cols[k]) for k in cols)
    assert shard_meta(tmp_path / "float16.parquet") == {"kind": MALICIOUS}


# ---- LoRA file format ----------------------------------------------------------------------------
def test_lora_file_merges_like_diffusers_loader(tmp_path, tiny_pipe):
    """Our merge W += (alpha/r) B A gives the same denoiser output as diffusers' own load_lora_weights of the file."""
    from trce_ray.config import TrainConfig
    from trce_ray.models import adapter_for
    from trce_ray.models.tiny import tiny_sd_pipeline
    from trce_ray.stage2.lora import apply_lora, lora_tensors, save_lora
    from trce_ray.stage2.params import select_trainable

    adapter = adapter_for(tiny_pipe)
    targets = adapter.lora_target_modules("visual")  # before injection renames the wrapped weights
    names = select_trainable(adapter, TrainConfig(lora_rank=2, lora_alpha=4.0))
    assert names and all("lora_" in n for n in names)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in adapter.denoiser.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # peft initialises B to 0; make the update non-zero
    path = tmp_path / "stage2.safetensors"
    save_lora(path, lora_tensors(dict(adapter.denoiser.named_parameters())), "unet", 2, 4.0, targets, {})
    z, t = torch.randn(1, *adapter.latent_shape()), torch.tensor([500])
    ours, theirs = tiny_sd_pipeline(0), tiny_sd_pipeline(0)
    changed = apply_lora(ours, path)
    assert sorted(changed) == sorted(f"{m}.weight" for m in targets)
    theirs.load_lora_weights(str(tmp_path), weight_name="stage2.safetensors")
    with torch.no_grad():
        cond = adapter_for(ours).condition(["a dog"])
        a = adapter_for(ours).predict_noise(z, t, cond)
        b = adapter_for(theirs).predict_noise(z, t, cond)
        c = adapter.predict_noise(z, t, cond)  # the peft-wrapped model itself
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    base = dict(tiny_sd_pipeline(0).unet.named_parameters())
    for n, p in ours.unet.named_parameters():
        assert torch.equal(p, base[n]) == (n not in changed), n
