"""Stage 1 on SDXL, SD3 and FLUX against Eq. 5 evaluated directly in float64 on every edited matrix (attn2 K/V,
`context_embedder`, the pooled projections), with embeddings from diffusers' own `encode_prompt` and token positions
found by hand from the token ids; every other weight bitwise unchanged."""

import copy
import json

import pytest
import torch

from trce_ray.artifacts import apply_delta
from trce_ray.cli import main
from trce_ray.concepts import PromptPair, preserve_prompts
from trce_ray.config import Stage1Config
from trce_ray.errors import TRCEError
from trce_ray.models import adapter_for
from trce_ray.models.tiny import tiny_pipeline
from trce_ray.stage1.run import compute_stage1

PAIRS = [
    PromptPair("a photo of nudity! with pornography", "a photo of a person wearing clothes"),
    PromptPair("a naked woman on a beach!!", "a woman wearing clothes on a beach"),
    PromptPair("pornography", "a person wearing clothes"),
    PromptPair("an erotic painting", "a painting of a person wearing clothes"),
    PromptPair("topless man", "a man wearing a shirt"),
]
KEEP = preserve_prompts(None, 40)  # 40 prompts + 5 pairs span the tiny models' 32-d pooled spaces
EOT, EOS = 49407, 1  # CLIP [EoT], T5 </s>


def first(ids, token):
    return ids.tolist().index(token)


def eq5(w, em, es, ek, eta, ridge=0.0):
    """Eq. 5 with each sum over its count (the normalised convention) and UCE's ridge, term by term, float64."""
    n, q = len(em), len(ek)
    num = sum(w @ torch.outer(es[i], em[i]) for i in range(n)) / n + eta * sum(w @ torch.outer(k, k) for k in ek) / q
    den = sum(torch.outer(e, e) for e in em) / n + eta * sum(torch.outer(k, k) for k in ek) / q
    d = w.shape[1]
    return (num + ridge * w) @ torch.linalg.inv(den + ridge * torch.eye(d, dtype=torch.float64))


def close(got, ref):
    return float((got.double() - ref).abs().max() / ref.abs().max()) < 2e-6  # float32 storage of a float64 solve


def check_untouched(denoiser, delta):
    """Applying the delta changes exactly its tensors; every other weight stays bit for bit."""
    before = {k: v.detach().clone() for k, v in denoiser.state_dict().items()}
    edited = copy.deepcopy(denoiser)
    apply_delta(edited, delta)
    after = edited.state_dict()
    assert all(torch.equal(after[k], delta[k]) for k in delta)
    assert all(torch.equal(after[k], before[k]) for k in before if k not in delta)


@torch.no_grad()
def sdxl_rows(pipe, prompts):
    """Token states, pooled vectors and the first row where both CLIP halves reached [EoT], via diffusers."""
    hidden, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    tok = [pipe.tokenizer, pipe.tokenizer_2]
    ids = [
        t(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids for t in tok
    ]
    eot = [max(first(ids[0][i], EOT), first(ids[1][i], EOT)) for i in range(len(prompts))]
    return hidden.double(), pooled.double(), eot


def test_sdxl_stage1_is_eq5_on_every_kv_and_the_pooled_text_columns():
    pipe = tiny_pipeline("sdxl")
    adapter = adapter_for(pipe)
    cfg = Stage1Config(concept="sexual", convention="normalised", eta=0.05, pooled=True, blocks="all")
    delta = compute_stage1(adapter, PAIRS, KEEP, cfg).delta
    hm, pm, eot_m = sdxl_rows(pipe, [p.erase for p in PAIRS])
    hs, ps, eot_s = sdxl_rows(pipe, [p.target for p in PAIRS])
    hk, pk, _ = sdxl_rows(pipe, KEEP)
    assert eot_m[1] == 9  # "...beach!!": tokenizer 1 has "!!" as one token (EoT at 8), tokenizer_2 two (EoT at 9)
    em = torch.stack([hm[i, eot_m[i]] for i in range(len(PAIRS))])
    es = torch.stack([hs[i, eot_s[i]] for i in range(len(PAIRS))])
    ek = hk.reshape(-1, hk.shape[-1])  # every position of every preservation prompt (77 each)
    params = dict(pipe.unet.named_parameters())
    kv = [n for n in params if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]
    assert len(kv) == 8 and set(delta) == set(kv) | {"add_embedding.linear_1.weight"}
    for name in kv:
        assert close(delta[name], eq5(params[name].detach().double(), em, es, ek, 0.05)), name
    # add_embedding.linear_1 reads [pooled text (32) | time embedding (6 x 8)]: only the text columns move
    w = params["add_embedding.linear_1.weight"].detach()
    got = delta["add_embedding.linear_1.weight"]
    assert close(got[:, :32], eq5(w[:, :32].double(), pm, ps, pk, 0.05))
    assert torch.equal(got[:, 32:], w[:, 32:])
    check_untouched(pipe.unet, delta)


def test_sdxl_default_edits_the_encoder_only_and_no_pooled_path():
    adapter = adapter_for(tiny_pipeline("sdxl"))
    delta = compute_stage1(adapter, PAIRS, KEEP, Stage1Config(concept="sexual")).delta
    assert sorted(delta) == [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight",
    ]


@torch.no_grad()
def test_sd3_stage1_sums_clip_and_t5_rows_of_one_context_embedder():
    pipe = tiny_pipeline("sd3")
    adapter = adapter_for(pipe)
    # the pooled path needs the ridge
    cfg = Stage1Config(concept="sexual", convention="normalised", eta=0.05, pooled=True, ridge=1e-3)
    delta = compute_stage1(adapter, PAIRS, KEEP, cfg).delta

    def rows(prompts):
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device="cpu")
        kw = dict(padding="max_length", truncation=True, return_tensors="pt")
        c1 = pipe.tokenizer(prompts, max_length=77, **kw).input_ids
        c2 = pipe.tokenizer_2(prompts, max_length=77, **kw).input_ids
        t5 = pipe.tokenizer_3(prompts, max_length=256, **kw).input_ids
        clip_eot = [max(first(c1[i], EOT), first(c2[i], EOT)) for i in range(len(prompts))]
        t5_eot = [77 + first(t5[i], EOS) for i in range(len(prompts))]  # T5 rows follow the 77 CLIP rows
        return hidden.double(), pooled.double(), clip_eot, t5_eot

    hm, pm, cm, tm = rows([p.erase for p in PAIRS])
    hs, ps, cs, ts = rows([p.target for p in PAIRS])
    hk, pk, _, _ = rows(KEEP)
    # default roles: CLIP [EoT]; T5 </s> and the last content token
    em = torch.stack([hm[i, p] for i in range(len(PAIRS)) for p in (cm[i], tm[i], tm[i] - 1)])
    es = torch.stack([hs[i, p] for i in range(len(PAIRS)) for p in (cs[i], ts[i], ts[i] - 1)])
    assert em.shape[1] == 48 and not em[0::3, 32:].any() and em[1::3, 32:].any()  # CLIP rows: zeros past 16 + 16
    ek = hk.reshape(-1, hk.shape[-1])  # 77 CLIP + 256 T5 rows per preservation prompt
    params = dict(pipe.transformer.named_parameters())
    assert set(delta) == {"context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"}
    w = params["context_embedder.weight"].detach().double()
    assert close(delta["context_embedder.weight"], eq5(w, em, es, ek, 0.05, ridge=1e-3))
    w = params["time_text_embed.text_embedder.linear_1.weight"].detach().double()
    assert close(delta["time_text_embed.text_embedder.linear_1.weight"], eq5(w, pm, ps, pk, 0.05, ridge=1e-3))
    check_untouched(pipe.transformer, delta)


def test_sd3_pooled_edit_without_ridge_says_why():
    adapter = adapter_for(tiny_pipeline("sd3"))
    with pytest.raises(TRCEError, match="pooled stream's stage-1 system is singular: SD3's pooled vector joins two"):
        compute_stage1(adapter, PAIRS, KEEP, Stage1Config(concept="sexual", pooled=True))


@torch.no_grad()
def test_flux_stage1_is_eq5_on_context_embedder_and_pooled_projection():
    pipe = tiny_pipeline("flux")
    adapter = adapter_for(pipe)
    cfg = Stage1Config(concept="sexual", convention="normalised", eta=0.05)
    delta = compute_stage1(adapter, PAIRS, KEEP, cfg).delta

    def rows(prompts):
        hidden, pooled, _ = pipe.encode_prompt(prompts, prompts, device="cpu", max_sequence_length=256)
        ids = pipe.tokenizer_2(prompts, padding="max_length", max_length=256, return_tensors="pt").input_ids
        return hidden.double(), pooled.double(), [first(ids[i], EOS) for i in range(len(prompts))]

    hm, pm, tm = rows([p.erase for p in PAIRS])
    hs, ps, ts = rows([p.target for p in PAIRS])
    hk, pk, _ = rows(KEEP)
    em = torch.stack([hm[i, p] for i in range(len(PAIRS)) for p in (tm[i], tm[i] - 1)])  # </s>, last content
    es = torch.stack([hs[i, p] for i in range(len(PAIRS)) for p in (ts[i], ts[i] - 1)])
    ek = hk.reshape(-1, hk.shape[-1])  # all 256 positions: FLUX gives T5 no mask, so padding carries the prompt
    params = dict(pipe.transformer.named_parameters())
    w = params["context_embedder.weight"].detach().double()
    assert close(delta["context_embedder.weight"], eq5(w, em, es, ek, 0.05))
    w = params["time_text_embed.text_embedder.linear_1.weight"].detach().double()
    assert close(delta["time_text_embed.text_embedder.linear_1.weight"], eq5(w, pm, ps, pk, 0.05))
    assert len(delta) == 2
    check_untouched(pipe.transformer, delta)


def test_flux_cli_explains_t5_roles(tmp_path, capsys):
    model = tmp_path / "flux"
    tiny_pipeline("flux").save_pretrained(model)
    small = ["--templates", "2", "--synonyms", "3", "--set", "stage1.preserve_count=40"]
    out = tmp_path / "eot"
    with pytest.warns(UserWarning, match="on the t5 segment 'eot' is the </s> token T5 appends: T5 attends both"):
        assert (
            main(
                ["erase", "--model", str(model), "--concept", "sexual", "--token", "eot", "--output", str(out), *small]
            )
            == 0
        )
    summary = json.loads((out / "stage1_summary.json").read_text())
    assert summary["model_family"] == "flux" and summary["token_roles"] == {"t5": ["eot"]}
    assert "T5 roles are: eot (the </s>" in summary["notes"][0] and summary["n_edited_matrices"] == 2
    capsys.readouterr()
    bad = ["erase", "--model", str(model), "--concept", "sexual", "--token", "sot", "--output", str(tmp_path / "x")]
    assert main(bad + small) == 2
    err = capsys.readouterr().err
    assert "token role 'sot' does not exist on the t5 segment; T5 roles are: eot (the </s> T5 appends" in err
    assert not (tmp_path / "x").exists()
