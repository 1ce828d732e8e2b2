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


def test_pad_role_rows_are_the_positions_after_each_eot_and_erase_blue_that_eot_alone_leaves():
    """The `pad` role (docs/toy.md, "Why some colours resist"): its rows are the hidden states after each prompt's
    first [EoT], sliced here by hand; with them stage 1 erases blue, which `[eot]` alone leaves drawn.

    Measured when the thresholds were set (16 direct + 16 paraphrase prompts, seed 0, normalised eta 10): `[eot]`
    blue 31% / 31%, preservation 100%; `[eot, pad]` 0% / 0%, preservation 96.4%."""
    from trce_ray.artifacts import apply_delta
    from trce_ray.models import adapter_for
    from trce_ray.stage1.embeddings import erase_embeddings
    from trce_ray.stage1.run import compute_stage1, stage1_prompts

    pipe, classifier = load_toy_pipeline(), load_toy_classifier()
    adapter = adapter_for(pipe)
    s1 = {"convention": "normalised", "eta": 10.0}
    cfg = stage1_config(ToyDemoConfig(target="blue", device="cpu", stage1=s1)).stage1
    pairs, keep = stage1_prompts(cfg)
    em, es = erase_embeddings(adapter, pairs[:3], ["pad"])
    m, s = adapter.encode_text([p.erase for p in pairs[:3]]), adapter.encode_text([p.target for p in pairs[:3]])
    want_m, want_s = [], []
    for i in range(3):
        a, b = int((m.input_ids[i] == 49407).nonzero()[0]) + 1, int((s.input_ids[i] == 49407).nonzero()[0]) + 1
        n = 77 - max(a, b)
        want_m.append(m.hidden[i, a : a + n].double())
        want_s.append(s.hidden[i, b : b + n].double())
    assert torch.equal(em, torch.cat(want_m)) and torch.equal(es, torch.cat(want_s))

    sets = prompt_sets("blue", n_direct=16, n_paraphrase=16, n_per_colour=4, seed=0)
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    rates = {}
    for tokens in (["eot"], ["eot", "pad"]):
        c = cfg.model_copy(update={"tokens": tokens})
        apply_delta(pipe.unet, compute_stage1(adapter, pairs, keep, c).delta)
        preds = {k: classify(classifier, generate(pipe, sets[k], steps=20, guidance=5.0)) for k in SET_NAMES}
        rates[tuple(tokens)] = score("blue", sets, preds)
        pipe.unet.load_state_dict(original)
    eot, pad = rates[("eot",)], rates[("eot", "pad")]
    assert eot["direct"] + eot["paraphrase"] >= 0.4, eot  # [eot] alone leaves blue drawn (measured 0.625)
    assert pad["direct"] <= 0.15 and pad["paraphrase"] <= 0.15, pad
    assert pad["preservation"] >= eot["preservation"] - 0.1, (eot, pad)
