"""SDXL, SD3 and FLUX adapters against diffusers' own pipelines: the conditioning `encode_prompt` builds, the exact
denoiser call the pipeline makes (packing, ids, timestep units, guidance, time ids), latent shapes, parameter sets
written out by name, and the one-sentence errors."""

from types import SimpleNamespace

import pytest
import torch

from trce_ray.errors import TRCEError
from trce_ray.models import Conditioning, adapter_for
from trce_ray.models.tiny import tiny_pipeline

PROMPTS = ["a photo of nudity! with pornography", "a red bus"]


@pytest.fixture(scope="module")
def pipes():
    return {f: tiny_pipeline(f) for f in ("sdxl", "sd3", "flux")}


def capture(module):
    """Record every forward call of `module`: (args, kwargs, output)."""
    calls = []
    handle = module.register_forward_hook(lambda m, a, k, out: calls.append((a, k, out)), with_kwargs=True)
    return calls, handle


@torch.no_grad()
def test_condition_is_what_encode_prompt_builds(pipes):
    sdxl, sd3, flux = (adapter_for(pipes[f]) for f in ("sdxl", "sd3", "flux"))
    pe, neg, pooled, neg_pooled = pipes["sdxl"].encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
    c = sdxl.condition(PROMPTS + [""])
    assert torch.equal(c.hidden[:2], pe) and torch.equal(c.pooled[:2], pooled)
    # force_zeros_for_empty_prompt: the unconditional branch is zeros, not the encoding of ""
    assert torch.equal(c.hidden[2:], neg[:1]) and torch.equal(c.pooled[2:], neg_pooled[:1]) and not c.hidden[2].any()
    assert pe.shape[-1] == 64  # 32 + 32: both encoders' penultimate states side by side

    pe, neg, pooled, neg_pooled = pipes["sd3"].encode_prompt(PROMPTS, PROMPTS, PROMPTS, device="cpu")
    c = sd3.condition(PROMPTS + [""])
    assert torch.equal(c.hidden[:2], pe) and torch.equal(c.pooled[:2], pooled)
    assert torch.equal(c.hidden[2:], neg[:1]) and torch.equal(c.pooled[2:], neg_pooled[:1])  # SD3 encodes ""
    assert c.hidden.shape == (3, 77 + 256, 48) and not c.hidden[:, :77, 32:].any()  # CLIP 16 + 16, zero-padded

    pe, pooled, _ = pipes["flux"].encode_prompt(PROMPTS, PROMPTS, device="cpu", max_sequence_length=256)
    c = flux.condition(PROMPTS)
    assert torch.equal(c.hidden, pe) and torch.equal(c.pooled, pooled) and c.extra == {}
    assert flux.max_sequence_length == 256  # the tokenizer's own limit, under FluxPipeline's 512


@torch.no_grad()
def test_sdxl_predict_noise_is_the_pipelines_unet_call(pipes):
    pipe = pipes["sdxl"]
    a = adapter_for(pipe)
    calls, handle = capture(pipe.unet)
    pipe(PROMPTS[:1], num_inference_steps=2, guidance_scale=5.0, height=32, width=48, output_type="latent")
    handle.remove()
    (sample, t), kw, out = calls[0][0], calls[0][1], calls[0][2]
    cond = Conditioning.cat([a.condition([""]), a.condition(PROMPTS[:1])])  # the pipeline's CFG batch order
    assert torch.equal(kw["encoder_hidden_states"], cond.hidden)
    assert torch.equal(kw["added_cond_kwargs"]["text_embeds"], cond.pooled)
    assert kw["added_cond_kwargs"]["time_ids"].tolist() == [[32, 48, 0, 0, 32, 48]] * 2 == a.time_ids(sample).tolist()
    assert torch.equal(a.predict_noise(sample, t, cond), out[0])
    assert a.prediction_type == "epsilon" and sample.shape[1:] == a.latent_shape(32, 48) == (4, 16, 24)


@torch.no_grad()
def test_sd3_predict_noise_is_the_pipelines_transformer_call(pipes):
    pipe = pipes["sd3"]
    a = adapter_for(pipe)
    calls, handle = capture(pipe.transformer)
    pipe(PROMPTS[:1], num_inference_steps=3, guidance_scale=5.0, height=32, width=48, output_type="latent")
    handle.remove()
    kw, out = calls[1][1], calls[1][2][0]  # the second step: a sigma that is not an integer
    t = pipe.scheduler.timesteps[1]
    assert t != t.round() and torch.equal(kw["timestep"], t.expand(2))  # float sigma * 1000, not truncated
    cond = Conditioning.cat([a.condition([""]), a.condition(PROMPTS[:1])])
    assert torch.equal(kw["encoder_hidden_states"], cond.hidden) and torch.equal(kw["pooled_projections"], cond.pooled)
    assert torch.equal(a.predict_noise(kw["hidden_states"], t, cond), out)
    assert a.prediction_type == "flow" and kw["hidden_states"].shape[1:] == a.latent_shape(32, 48) == (4, 16, 24)


@pytest.mark.parametrize("guidance_embeds", [False, True])
@torch.no_grad()
def test_flux_predict_noise_takes_unpacked_latents_and_scheduler_timesteps(pipes, guidance_embeds):
    from diffusers import FluxTransformer2DModel

    pipe = pipes["flux"]
    if guidance_embeds:  # FLUX.1-dev's guidance-distilled layout
        pipe = tiny_pipeline("flux")
        config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
        torch.manual_seed(1)
        pipe.transformer = FluxTransformer2DModel(**{**config, "guidance_embeds": True})
    a = adapter_for(pipe)
    a.guidance_scale = 4.0
    calls, handle = capture(pipe.transformer)
    L = a.max_sequence_length  # FLUX has no text attention mask: the padding length is part of the model input
    pipe(
        PROMPTS[:1],
        num_inference_steps=2,
        guidance_scale=4.0,
        height=32,
        width=48,
        output_type="latent",
        max_sequence_length=L,
    )
    handle.remove()
    kw, out = calls[1][1], calls[1][2][0]
    t = pipe.scheduler.timesteps[1]
    cond = a.condition(PROMPTS[:1])
    assert torch.equal(kw["encoder_hidden_states"], cond.hidden) and torch.equal(kw["pooled_projections"], cond.pooled)
    if guidance_embeds:
        assert torch.equal(kw["guidance"], cond.extra["guidance"]) and cond.extra["guidance"].tolist() == [4.0]
    else:
        assert kw["guidance"] is None and "guidance" not in cond.extra
    # diffusers' own unpacking gives the [B, C, H, W] latents the adapter takes, and its prediction in that layout
    latents = pipe._unpack_latents(kw["hidden_states"], 32, 48, pipe.vae_scale_factor)
    assert latents.shape == (1, *a.latent_shape(32, 48)) == (1, 4, 16, 24)
    expected = pipe._unpack_latents(out, 32, 48, pipe.vae_scale_factor)
    calls, handle = capture(pipe.transformer)
    got = a.predict_noise(latents, t, cond)
    handle.remove()
    assert torch.equal(got, expected) and a.prediction_type == "flow"
    mine = calls[0][1]  # the ids and timestep the adapter built are the pipeline's
    assert torch.equal(mine["img_ids"], kw["img_ids"]) and torch.equal(mine["txt_ids"], kw["txt_ids"])
    assert mine["img_ids"].shape == (8 * 12, 3) and mine["txt_ids"].shape == (256, 3)  # no batch dimension
    assert torch.equal(mine["timestep"], kw["timestep"]) and torch.equal(mine["hidden_states"], kw["hidden_states"])


def test_default_latent_shapes(pipes):
    sdxl, sd3, flux = (adapter_for(pipes[f]) for f in ("sdxl", "sd3", "flux"))
    assert sdxl.latent_shape() == (4, 16, 16) and sd3.latent_shape() == (4, 16, 16)
    assert flux.latent_shape() == (4, 128, 128)  # FluxPipeline's default 128 * vae_scale_factor pixels
    assert flux.latent_shape(30, 30) == (4, 14, 14)  # FLUX rounds down to whole 2x2 patches, as the pipeline


def _set(prefix, names, tails):
    return {f"{prefix}.{n}.{t}" for n in names for t in tails}


WB = ("weight", "bias")


def test_parameter_sets_by_name(pipes):
    sdxl, sd3, flux = (adapter_for(pipes[f]) for f in ("sdxl", "sd3", "flux"))
    down = "down_blocks.0.attentions.0.transformer_blocks.0"
    mid = "mid_block.attentions.0.transformer_blocks.0"
    ups = [f"up_blocks.1.attentions.{i}.transformer_blocks.0" for i in (0, 1)]
    # stage 1: K/V of attn2 in the encoder only by default (paper, appendix F); pooled text columns on request
    assert sdxl.edit_targets() == {f"{down}.attn2.to_k.weight": 0, f"{down}.attn2.to_v.weight": 0}
    every = {f"{b}.attn2.to_{x}.weight" for b in [down, mid, *ups] for x in "kv"}
    assert set(sdxl.edit_targets(blocks="all")) == every
    assert sdxl.edit_targets(pooled=True)["add_embedding.linear_1.weight"] == 1
    assert sdxl.edit_columns("add_embedding.linear_1.weight") == slice(0, 32)  # the text columns, before time ids
    visual = {f"{b}.attn1.to_{x}.{w}" for b in [down, mid, *ups] for x in ("q", "k", "v", "out.0") for w in WB}
    visual |= {f"{b}.attn2.to_q.weight" for b in [down, mid, *ups]}  # to_q has no bias in diffusers' attention
    visual = {n for n in visual if n in dict(sdxl.denoiser.named_parameters())}
    assert set(sdxl.trainable_parameter_names("visual")) == visual  # stage 2: all blocks by default
    assert set(sdxl.trainable_parameter_names("visual", "encoder")) == {n for n in visual if n.startswith("down")}
    assert set(sdxl.trainable_parameter_names("kv")) == {n for n in every}

    for a in (sd3, flux):
        assert a.edit_targets(pooled=True) == {
            "context_embedder.weight": 0,
            "time_text_embed.text_embedder.linear_1.weight": 1,
        }
    assert sd3.edit_targets() == {"context_embedder.weight": 0} and len(flux.edit_targets()) == 2  # defaults
    image = ("to_q", "to_k", "to_v", "to_out.0")
    sd3_visual = {f"transformer_blocks.{i}.attn.{m}.{w}" for i in (0, 1) for m in image for w in WB}
    assert set(sd3.trainable_parameter_names("visual")) == sd3_visual  # never add_q/k/v_proj or to_add_out
    assert set(sd3.trainable_parameter_names("kv")) == _set(
        "transformer_blocks", [0, 1], ["attn.add_k_proj.weight"]
    ) | _set("transformer_blocks", [0, 1], ["attn.add_k_proj.bias", "attn.add_v_proj.weight", "attn.add_v_proj.bias"])
    double = {f"transformer_blocks.0.attn.{m}.{w}" for m in image for w in WB}
    single = {f"single_transformer_blocks.0.attn.{m}.{w}" for m in ("to_q", "to_k", "to_v") for w in WB}
    assert set(flux.trainable_parameter_names("visual")) == double
    assert set(flux.trainable_parameter_names("visual", "all")) == double | single  # single-stream only when asked
    assert flux.lora_target_modules("visual") == sorted(n.rsplit(".", 1)[0] for n in double if n.endswith("weight"))


def test_errors_say_why(pipes):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    )
    with pytest.raises(TRCEError, match=r"no adapter for DDPMPipeline; supported families: sd \(StableDiffusion"):
        adapter_for(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))
    try:
        adapter_for(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))
    except TRCEError as err:
        assert all(f in str(err) for f in ("sdxl (StableDiffusionXLPipeline", "sd3 (", "flux (FluxPipeline"))
    with pytest.raises(TRCEError, match="blocks: encoder is for UNets; flux is a transformer without an encoder"):
        adapter_for(pipes["flux"]).trainable_parameter_names("visual", "encoder")
    with pytest.raises(TRCEError, match="blocks: encoder is for UNets; sd3"):
        adapter_for(pipes["sd3"]).edit_targets(blocks="encoder")
    no_loader = type(adapter_for(pipes["flux"]))(SimpleNamespace(transformer=pipes["flux"].transformer))
    with pytest.raises(TRCEError, match="cannot load LoRA weights .* train the full parameter set instead"):
        no_loader.lora_target_modules("visual")


def test_generation_kwargs_per_family(pipes):
    assert adapter_for(pipes["sdxl"]).generation_kwargs(7.5, 2) == {"guidance_scale": 7.5}
    assert adapter_for(pipes["sd3"]).generation_kwargs(7.5, 2) == {"guidance_scale": 7.5, "max_sequence_length": 256}
    # FLUX without a guidance embedding: true CFG against "", the unconditional branch of `condition`
    assert adapter_for(pipes["flux"]).generation_kwargs(3.0, 2) == {
        "max_sequence_length": 256,
        "true_cfg_scale": 3.0,
        "negative_prompt": ["", ""],
    }
