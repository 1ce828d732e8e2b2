"""The shipped toy model and classifier: they load from the package, are what they claim to be, and the classifier
reads ground truth off fresh renders."""

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from trce_ray.models import adapter_for
from trce_ray.models.loading import resolve_model_path
from trce_ray.models.tokenizer import BOS_ID, CLIP_VOCAB_SIZE, EOS_ID
from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline, toy_pipeline_dir, toy_weights_dir
from trce_ray.toy.bench import classifier_accuracy
from trce_ray.toy.gates import CLASSIFIER_GATE
from trce_ray.toy.world import SIZE


def test_shipped_weights_fit_the_size_budget():
    total = sum(p.stat().st_size for p in toy_weights_dir().rglob("*") if p.is_file())
    assert total <= 25 * 2**20, f"toy weights are {total / 2**20:.1f} MiB"
    assert not list(toy_weights_dir().rglob("*.bin")), "safetensors only"


def test_shipped_pipeline_is_a_real_sd_pipeline_with_clip_token_ids():
    assert resolve_model_path("toy") == str(toy_pipeline_dir())
    pipe = load_toy_pipeline()
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    cfg = pipe.text_encoder.config
    ids = (cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id)
    assert ids == (CLIP_VOCAB_SIZE, BOS_ID, EOS_ID, EOS_ID)
    ids = pipe.tokenizer("a red circle", padding="max_length", max_length=77).input_ids
    assert ids[0] == BOS_ID and ids[4:] == [EOS_ID] * 73
    adapter = adapter_for(pipe)
    side = SIZE // pipe.vae_scale_factor
    assert adapter.family == "sd" and adapter.latent_shape() == (4, side, side)
    assert len(adapter.edit_targets()) == 2 * sum(1 for n, _ in pipe.unet.named_modules() if n.endswith("attn2"))
    # float16 storage, float32 in memory
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}


def test_classifier_reads_fresh_renders():
    acc = classifier_accuracy(load_toy_classifier(), n=500, seed=2024)
    assert acc["both"] >= CLASSIFIER_GATE, acc
