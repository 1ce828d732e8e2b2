"""Stage 1 known answers: Eq. 5 in float64, its limits, count normalisation, and untouched weights."""

import pytest
import torch

from trce_ray.concepts import PromptPair, expand_pack, load_pack
from trce_ray.config import Stage1Config
from trce_ray.errors import TRCEError
from trce_ray.models import adapter_for
from trce_ray.stage1.closed_form import solve_map, stream_statistics
from trce_ray.stage1.embeddings import erase_embeddings, preserve_gram
from trce_ray.stage1.run import compute_stage1

PAIRS = [
    PromptPair("a photo of nudity", "a photo of a person wearing clothes"),
    PromptPair("a naked woman on a beach", "a woman wearing clothes on a beach"),
    PromptPair("pornography", "a person wearing clothes"),
    PromptPair("an erotic painting", "a painting of a person wearing clothes"),
    PromptPair("topless man", "a man wearing a shirt"),
]
KEEP = [
    "a dog on a sofa",
    "a red bus in the street",
    "two people playing tennis",
    "a bowl of fruit",
    "a mountain lake",
]


def _cfg(**kw):
    return Stage1Config(concept="sexual", **kw)


def reference_eq5(adapter, pairs, keep, eta, mode="all"):
    """Eq. 5 term by term, per layer and per embedding, in float64, with explicit normalisation."""
    em, es = erase_embeddings(adapter, pairs, ["eot"])
    out = adapter.encode_text(keep)
    h = out.hidden.double()
    ek = h.reshape(-1, h.shape[-1]) if mode == "all" else h[torch.arange(len(keep)), out.eot_index]
    params = dict(adapter.denoiser.named_parameters())
    result = {}
    for name in adapter.edit_targets():
        w = params[name].detach().double()
        num = sum(w @ torch.outer(es[i], em[i]) for i in range(len(em))) / len(em)
        num = num + eta * sum(w @ torch.outer(k, k) for k in ek) / len(ek)
        den = sum(torch.outer(em[i], em[i]) for i in range(len(em))) / len(em)
        den = den + eta * sum(torch.outer(k, k) for k in ek) / len(ek)
        result[name] = num @ torch.linalg.inv(den)
    return result


def test_matches_direct_float64_eq5(tiny_pipe):
    adapter = adapter_for(tiny_pipe)
    ref = reference_eq5(adapter, PAIRS, KEEP, eta=0.05)
    got = compute_stage1(adapter, PAIRS, KEEP, _cfg(eta=0.05)).delta
    assert set(got) == set(ref) and len(got) == 8  # 4 cross-attention layers x (K, V)
    for name in ref:
        w = got[name].double()
        assert ((w - ref[name]).abs().max() / ref[name].abs().max()) < 1e-6  # float32 storage of a float64 solve


def test_solve_map_is_exact_in_float64(tiny_pipe):
    adapter = adapter_for(tiny_pipe)
    em, es = erase_embeddings(adapter, PAIRS, ["eot"])
    gram, q = preserve_gram(adapter, KEEP)
    stats = stream_statistics(em, es, gram, q)
    m = solve_map(stats, eta=0.05)
    lhs = m @ (stats.erase_gram + 0.05 * stats.preserve_gram)
    assert torch.allclose(lhs, stats.cross + 0.05 * stats.preserve_gram, rtol=0, atol=1e-10)


def test_large_eta_keeps_weights(tiny_pipe):
    adapter = adapter_for(tiny_pipe)
    params = dict(adapter.denoiser.named_parameters())
    delta = compute_stage1(adapter, PAIRS, KEEP, _cfg(eta=1e8)).delta
    for name, w in delta.items():
        assert ((w - params[name].detach()).norm() / params[name].detach().norm()) < 1e-4


def test_tiny_eta_maps_malicious_to_safe(tiny_pipe):
    adapter = adapter_for(tiny_pipe)
    params = dict(adapter.denoiser.named_parameters())
    assert len(PAIRS) < 32  # fewer erase embeddings than dimensions: the map can be exact
    result = compute_stage1(adapter, PAIRS, KEEP, _cfg(eta=1e-4))
    em, es = erase_embeddings(adapter, PAIRS, ["eot"])
    for name, w_new in result.delta.items():
        w = params[name].detach().double()
        target = es @ w.T
        assert ((em @ w_new.double().T - target).norm() / target.norm()) < 1e-3
    assert result.diagnostics["erase_residual"] < 1e-3


def test_sums_are_normalised_by_count(tiny_pipe):
    """Repeating every prompt leaves the solution unchanged: each sum is divided by its count (eta applied once)."""
    adapter = adapter_for(tiny_pipe)
    a = compute_stage1(adapter, PAIRS, KEEP, _cfg(eta=0.05)).delta
    b = compute_stage1(adapter, PAIRS * 3, KEEP * 2, _cfg(eta=0.05)).delta
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-7)


def test_weights_outside_edited_kv_are_bitwise_unchanged(tiny_pipe):
    from trce_ray.artifacts import apply_delta

    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in tiny_pipe.text_encoder.state_dict().items()}
    adapter = adapter_for(tiny_pipe)
    delta = compute_stage1(adapter, PAIRS, KEEP, _cfg()).delta
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in delta)
    apply_delta(adapter.denoiser, delta)
    after = tiny_pipe.unet.state_dict()
    for name, value in before.items():
        if name in delta:
            assert not torch.equal(after[name], value)
        else:
            assert torch.equal(after[name], value), name
    assert all(torch.equal(v, tiny_pipe.text_encoder.state_dict()[k]) for k, v in text_before.items())


def test_token_roles_add_rows(tiny_pipe):
    adapter = adapter_for(tiny_pipe)
    pack = expand_pack(load_pack("sexual"), n_templates=2, n_synonyms=3)
    em1, _ = erase_embeddings(adapter, pack, ["eot"])
    em2, es2 = erase_embeddings(adapter, pack, ["eot", "sot"])
    emk, _ = erase_embeddings(adapter, pack, ["key"])
    assert em1.shape[0] == len(pack) and em2.shape[0] == 2 * len(pack)
    n_key_tokens = sum(
        len(adapter.tokenizer(p.erase[slice(*p.erase_key)], add_special_tokens=False).input_ids) for p in pack
    )
    assert emk.shape[0] == n_key_tokens
    # [SoT] sees only itself under CLIP's causal mask: malicious and safe [SoT] rows are identical.
    assert torch.allclose(em2[1::2], es2[1::2])


def test_key_role_needs_marked_keyword(tiny_pipe):
    with pytest.raises(TRCEError, match="token role 'key' needs the keyword marked"):
        compute_stage1(adapter_for(tiny_pipe), PAIRS, KEEP, _cfg(tokens=["key"]))


def test_singular_system_suggests_ridge(tiny_pipe):
    adapter = adapter_for(tiny_pipe)
    cfg = _cfg(preserve_tokens="eot")  # 5 erase + 5 preserve [EoT] rows cannot span 32 dims
    with pytest.raises(TRCEError, match="ridge"):
        compute_stage1(adapter, PAIRS, KEEP, cfg)
    assert compute_stage1(adapter, PAIRS, KEEP, _cfg(preserve_tokens="eot", ridge=1e-4)).delta
