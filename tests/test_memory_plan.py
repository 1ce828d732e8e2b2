"""bench/memory_plan.py: parameter-set counts on the tiny models against hand-computed sizes, the per-GPU memory
arithmetic on hand-worked cases, and the meta-device replay against the measured CPU step."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import memory_plan as mp  # noqa: E402

GB = 10**9


def _set(key, model, name, scope_name=None):
    sets = [p for p in mp.param_sets(key, model.config) if p.name == name]
    return sets[0] if scope_name is None else next(p for p in sets if p.scope_name == scope_name)


def test_counts_on_tiny_flux_by_hand():
    # Tiny FLUX: 2 heads x 16 = inner width 32, T5 and pooled widths 32; one double- and one single-stream block.
    # A 32 -> 32 Linear with bias holds 32 * 32 + 32 = 1056 parameters.
    den = mp.tiny_denoiser("flux-dev")
    assert mp.count(den, _set("flux-dev", den, "context_embedder")) == (1, 32 * 32)
    assert mp.count(den, _set("flux-dev", den, "pooled: time_text_embed.text_embedder.linear_1")) == (1, 32 * 32)
    visual = _set("flux-dev", den, "visual: image-stream attn.to_q/k/v/to_out")
    assert mp.count(den, visual) == (8, 4 * 1056)  # to_q, to_k, to_v, to_out.0 of the double block, weight + bias
    assert mp.count(den, _set("flux-dev", den, "visual+single: + single-stream attn.to_q/k/v")) == (14, 7 * 1056)
    assert mp.count(den, _set("flux-dev", den, "kv analogue: text-stream attn.add_k_proj/add_v_proj")) == (4, 2 * 1056)
    # LoRA r=4 on the four 32 -> 32 projections: A is 4 x 32, B is 32 x 4.
    assert mp.lora_param_count(den, visual, rank=4) == 4 * (4 * 32 + 32 * 4)
    assert sorted(mp.lora_targets(den, visual)) == [
        f"transformer_blocks.0.attn.{m}" for m in ("to_k", "to_out.0", "to_q", "to_v")
    ]


def test_counts_on_tiny_sdxl_by_hand():
    # Tiny SDXL UNet: one transformer block at 32 channels in down_blocks.0, one at 64 in the mid block, two at 32 in
    # up_blocks.1; cross-attention reads 64-d text. to_q/k/v carry no bias, to_out.0 does.
    den = mp.tiny_denoiser("sdxl")
    kv = "attn2.to_k/to_v"
    assert mp.count(den, _set("sdxl", den, kv, "all blocks")) == (8, 2 * 64 * (32 + 64 + 32 + 32))
    assert mp.count(den, _set("sdxl", den, kv, "UNet encoder (down_blocks)")) == (2, 2 * 64 * 32)
    assert mp.count(den, _set("sdxl", den, kv, "encoder + mid_block")) == (4, 2 * 64 * (32 + 64))
    # attn1 q, k, v, out (+ out bias) and attn2.to_q: 5 C^2 + C per block.
    visual = "visual: attn1 + attn2.to_q"
    assert mp.count(den, _set("sdxl", den, visual, "all blocks"))[1] == 3 * (5 * 32**2 + 32) + 5 * 64**2 + 64
    assert mp.count(den, _set("sdxl", den, visual, "UNet encoder (down_blocks)"))[1] == 5 * 32**2 + 32
    # add_embedding.linear_1: (32 pooled + 6 x 8 time) -> 4 x 32; the pooled text part is its first 32 columns.
    assert mp.count(den, _set("sdxl", den, "pooled text columns of add_embedding.linear_1")) == (1, 128 * 32)


def test_published_configs_give_the_published_totals():
    # FLUX.1-dev transformer: 11.9B parameters; SDXL UNet: 2.57B (diffusers' benchmark table).
    assert mp.total_params(mp.build("flux-dev"))[0] == pytest.approx(11.9e9, rel=0.005)
    assert mp.total_params(mp.build("sdxl"))[0] == pytest.approx(2.57e9, rel=0.005)


def test_zero_arithmetic_hand_worked():
    # P = 10B parameters, T = 1B trainable, 4 GPUs, 10 GB of activations, no buffers.
    p, t, act = 10 * GB, 1 * GB, 10 * GB
    z3 = mp.stage2_memory("zero3-bf16", 4, p, 0, t, act)
    # bf16 weights 2 * 10B / 4 (frozen 4.5 GB + trainable 0.5 GB); bf16 grads 2 * 1B / 4; fp32 master + Adam m, v
    # 12 * 1B / 4; one 5e8-element bf16 reduce bucket; gathered: 2 * (1e9 live + 5e7 prefetch); step: 4 * 1B / 4.
    assert (z3["frozen_weights"], z3["trainable_weights"], z3["grads"], z3["optimizer"]) == (4.5e9, 0.5e9, 0.5e9, 3e9)
    assert (z3["buffers"], z3["gathered"], z3["step_temporary"]) == (1e9, 2.1e9, 1e9)
    assert z3["total"] == 4.5e9 + 0.5e9 + 0.5e9 + 3e9 + 1e9 + 10e9 + 2.1e9  # activations win over the step
    z2 = mp.stage2_memory("zero2-bf16", 4, p, 0, t, act)  # weights not partitioned
    assert (z2["frozen_weights"], z2["trainable_weights"], z2["gathered"]) == (18e9, 2e9, 0)
    assert z2["total"] == 18e9 + 2e9 + 0.5e9 + 3e9 + 1e9 + 10e9
    ddp = mp.stage2_memory("ddp-fp32", 4, p, 0, t, act)  # fp32 weights are their own master copy; + DDP buckets
    assert ddp["total"] == 36e9 + 4e9 + 4e9 + 8e9 + 4e9 + 10e9
    # One GPU: no DDP buckets; with no activations the foreach AdamW temporary (4 bytes / trainable) sets the peak.
    assert mp.stage2_memory("ddp-fp32", 1, p, 0, t, 0)["total"] == 36e9 + 4e9 + 4e9 + 8e9 + 4e9
    lora = mp.stage2_memory("lora-r16", 2, p, 0, 10**7, act)  # bf16 base; LoRA w, grad, m, v fp32 + DDP bucket
    assert lora["total"] == 20e9 + 16 * 10**7 + 4 * 10**7 + 10e9
    with pytest.raises(ValueError, match="setting must be one of"):
        mp.stage2_memory("zero4", 1, p, 0, t)


def test_meta_replay_reproduces_the_measured_tiny_step():
    # The activation estimate rests on this: the step replayed on the meta device peaks at exactly the bytes the
    # same step allocates on CPU (fp32); in bf16 the replay keeps LayerNorm statistics in fp32 as CUDA does, where
    # the CPU kernel keeps them in bf16, so it may only be slightly above.
    name = "visual: image-stream attn.to_q/k/v/to_out"
    shape = mp.StepShape(draws=1, preserve=1, latent=16, text_tokens=32)
    for ckpt in (False, True):
        measured, replayed = mp.calibrate("flux-dev", name, "fp32", ckpt, shape)
        assert replayed == measured > 0
    measured, replayed = mp.calibrate("flux-dev", name, "bf16", False, shape)
    assert measured <= replayed <= 1.01 * measured
