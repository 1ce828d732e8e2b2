"""Stage 1 on the shipped toy model really erases: the classifier stops seeing the target colour, for prompts that
name it and for held-out paraphrases the pack never saw, while other colours survive.

Measured when the thresholds were set (shipped weights, these exact prompt sets and seeds, CPU, float32):
original direct 100%, paraphrase 100%, preservation 96.4%; TRCE(T) (eta 1.0, [EoT]) direct 0%, paraphrase 0%,
preservation 96.4%. Margins: the original must stay >= 85% (15 points), the edit must bring both target rates to
<= 15% (15 points above the measured 0%), and preservation may drop at most 15 points.
"""

import pytest
import torch

from trce_ray import load_erased
from trce_ray.stage1.run import run_stage1
from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline
from trce_ray.toy.bench import SET_NAMES, classify, generate, prompt_sets, score
from trce_ray.toy.demo import ToyDemoConfig
from trce_ray.toy.rows import stage1_config

SETS = prompt_sets("red", n_direct=16, n_paraphrase=16, n_per_colour=4, seed=0)


def _measure(pipe, classifier, reference=None):
    preds = {s: classify(classifier, generate(pipe, SETS[s], steps=20, guidance=5.0)) for s in SET_NAMES}
    return score("red", SETS, preds, reference), preds


@pytest.fixture(scope="module")
def erased(tmp_path_factory):
    base, classifier = load_toy_pipeline(), load_toy_classifier()
    before, preds = _measure(base, classifier)
    out = tmp_path_factory.mktemp("erase") / "red"
    run_stage1(stage1_config(ToyDemoConfig(target="red", device="cpu")), out, pipe=base, progress=False)
    pipe = load_erased(str(out), device="cpu")
    after, _ = _measure(pipe, classifier, preds["preservation"]["features"])
    return base, pipe, before, after


def test_original_model_draws_red_when_asked(erased):
    _, _, before, _ = erased
    assert before["direct"] >= 0.85 and before["paraphrase"] >= 0.85, before


def test_stage1_erases_red_for_direct_and_held_out_prompts(erased):
    _, _, before, after = erased
    assert after["direct"] <= 0.15, after
    assert after["paraphrase"] <= 0.15, after
    assert after["direct_shape"] >= 0.75, "the shape asked for should survive a colour erasure"


def test_stage1_keeps_other_colours(erased):
    _, _, before, after = erased
    assert after["preservation"] >= before["preservation"] - 0.15, (before, after)
    assert after["fid_gen"] > 0.0


def test_only_cross_attention_keys_and_values_changed(erased):
    base, pipe, _, _ = erased
    edited = base_params = 0
    new = dict(pipe.unet.named_parameters())
    for name, p in base.unet.named_parameters():
        same = torch.equal(p, new[name])
        if ".attn2.to_k." in name or ".attn2.to_v." in name:
            edited += not same
        else:
            base_params += 1
            assert same, name
    assert edited > 0 and base_params > 0
    for a, b in zip(base.text_encoder.parameters(), pipe.text_encoder.parameters()):
        assert torch.equal(a, b)
