"""Stage 1 known answers: each eta convention against its own formula written out in float64, the conversions
between them, the limits of Eq. 5, and untouched weights.

The references below embed prompts straight through transformers (tokenizer + text encoder, first [EoT] found by
hand) and loop over prompts and token positions as the paper's sums do; they use none of the package's stage-1
helpers, so a wrong count, a wrong token or a wrong scale in the package makes them disagree.
"""

import math

import pytest
import torch

from trce_ray.concepts import PromptPair, expand_pack, load_pack
from trce_ray.config import Stage1Config
from trce_ray.errors import ConfigError, TRCEError
from trce_ray.models import adapter_for
from trce_ray.stage1.closed_form import solve_map
from trce_ray.stage1.embeddings import erase_embeddings
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
# 5 erase + 40 preservation [EoT] rows span the tiny model's 32-dim text space: Eq. 5 as printed is solvable
KEEP_40 = [
    f"a {c} {o} {w}"
    for c in ("red", "small", "wooden", "old")
    for o in ("dog", "car", "house", "boat", "cup")
    for w in ("in the rain", "at night")
]
COCO_CAPTIONS_2014 = 414_113 + 202_654  # captions_train2014 + captions_val2014: what MACE's cache_coco.py sums


def _cfg(**kw):
    return Stage1Config(concept="sexual", **kw)


def _embed(pipe, prompts):
    """Final-layer text states [B, 77, d] (float64) and the first [EoT] position of each prompt, by hand."""
    tok = pipe.tokenizer
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids).last_hidden_state.double()
    eot = [row.tolist().index(tok.eos_token_id) for row in ids]
    return hidden, eot


def _kv_weights(pipe):
    return {
        n: p.detach().double() for n, p in pipe.unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n
    }


def reference(pipe, pairs, keep, eta, convention, roles=("eot",), preserve="eot", ridge=0.0):
    """W' of every K/V matrix by Eq. 5 in `convention`, written out per prompt and per token position.

    paper:      (sum_i W e_s e_m^T + eta sum_j W e_k e_k^T) (sum_i e_m e_m^T + eta sum_j e_k e_k^T)^-1
    normalised: each sum divided by its number of rows (n erase rows, q preservation rows)
    authors:    erase sums / number of erase prompts; preservation eta^2 / 3e4 * (N_c / q_prompts) * sum over all
                77 positions of every preservation prompt (the authors' cache of N_c COCO captions, estimated)
    """
    hm, im = _embed(pipe, [p.erase for p in pairs])
    hs, is_ = _embed(pipe, [p.target for p in pairs])
    hk, ik = _embed(pipe, keep)
    rows = []  # per erase prompt: its (e_m, e_s) rows, one per token role
    for i in range(len(pairs)):
        mine = []
        if "eot" in roles:
            mine.append((hm[i, im[i]], hs[i, is_[i]]))
        if "sot" in roles:
            mine.append((hm[i, 0], hs[i, 0]))
        rows.append(mine)
    keep_rows = [[hk[j, ik[j]]] if preserve == "eot" else [hk[j, t] for t in range(77)] for j in range(len(keep))]
    n_rows, q_rows = sum(map(len, rows)), sum(map(len, keep_rows))
    if convention == "paper":
        a, b = 1.0, eta
    elif convention == "normalised":
        a, b = 1.0 / n_rows, eta / q_rows
    else:
        a, b = 1.0 / len(pairs), eta * eta / 3e4 * COCO_CAPTIONS_2014 / len(keep)
    out = {}
    for name, w in _kv_weights(pipe).items():
        d = w.shape[1]
        num = ridge * w + sum(a * w @ torch.outer(e_s, e_m) for mine in rows for e_m, e_s in mine)
        den = ridge * torch.eye(d, dtype=torch.float64) + sum(a * torch.outer(e_m, e_m) for m in rows for e_m, _ in m)
        for mine in keep_rows:
            for e_k in mine:
                num = num + b * w @ torch.outer(e_k, e_k)
                den = den + b * torch.outer(e_k, e_k)
        out[name] = num @ torch.linalg.inv(den)
    return out


def _assert_close(got, ref, tol=1e-6):  # float32 storage of a float64 solve
    assert set(got) == set(ref) and len(got) == 8  # 4 cross-attention layers x (K, V)
    for name in ref:
        assert ((got[name].double() - ref[name]).abs().max() / ref[name].abs().max()) < tol, name


@pytest.mark.parametrize(
    "convention, keep, kw",
    [
        ("paper", KEEP_40, {}),  # Eq. 5 as printed: first [EoT] of erase, target and preservation prompts
        ("paper", KEEP, {"preserve_tokens": "all"}),
        ("normalised", KEEP, {}),  # every position of the preservation prompts by default
        ("normalised", KEEP_40, {"preserve_tokens": "eot", "tokens": ["eot", "sot"]}),
        ("authors", KEEP, {}),
        ("authors", KEEP, {"tokens": ["eot", "sot"], "ridge": 0.01}),  # erase sums over prompts, not rows
    ],
)
def test_each_convention_matches_its_formula_in_float64(tiny_pipe, convention, keep, kw):
    cfg = _cfg(convention=convention, eta=0.05, **kw)
    got = compute_stage1(adapter_for(tiny_pipe), PAIRS, keep, cfg).delta
    roles = tuple(kw.get("tokens", ["eot"]))  # SD's default role: the first [EoT]
    ref = reference(tiny_pipe, PAIRS, keep, 0.05, convention, roles, cfg.preserve_tokens, kw.get("ridge", 0.0))
    _assert_close(got, ref)


def test_conventions_convert_by_the_documented_formula(tiny_pipe):
    """docs/stage1.md: without a ridge only b/a matters, so eta_paper = eta_norm * n / q
    = eta_authors^2 * N_c * n_prompts / (3e4 * q_prompts) give the same W' (same preservation rows)."""
    adapter = adapter_for(tiny_pipe)
    n, q_prompts = len(PAIRS), len(KEEP)
    q = 77 * q_prompts  # every position
    eta_norm = 0.3
    eta_paper = eta_norm * n / q
    eta_authors = math.sqrt(eta_paper * 3e4 * q_prompts / (COCO_CAPTIONS_2014 * n))
    norm = compute_stage1(adapter, PAIRS, KEEP, _cfg(convention="normalised", eta=eta_norm)).delta
    paper = compute_stage1(adapter, PAIRS, KEEP, _cfg(convention="paper", eta=eta_paper, preserve_tokens="all")).delta
    authors = compute_stage1(adapter, PAIRS, KEEP, _cfg(convention="authors", eta=eta_authors)).delta
    for name in norm:
        scale = norm[name].abs().max()
        assert (paper[name] - norm[name]).abs().max() / scale < 1e-5
        assert (authors[name] - norm[name]).abs().max() / scale < 1e-5
    other = compute_stage1(adapter, PAIRS, KEEP, _cfg(convention="paper", eta=eta_norm, preserve_tokens="all")).delta
    assert max((other[k] - norm[k]).abs().max() / norm[k].abs().max() for k in norm) > 1e-2  # the same eta is not


def test_repetition_scales_only_the_paper_convention(tiny_pipe):
    """Repeating prompts changes nothing where sums are averaged (normalised, authors); in Eq. 5 as printed,
    repeating the preservation prompts twice is the same as doubling eta."""
    adapter = adapter_for(tiny_pipe)
    for convention in ("normalised", "authors"):
        a = compute_stage1(adapter, PAIRS, KEEP, _cfg(convention=convention, eta=0.05)).delta
        b = compute_stage1(adapter, PAIRS * 3, KEEP * 2, _cfg(convention=convention, eta=0.05)).delta
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a), convention
    a = compute_stage1(adapter, PAIRS, KEEP_40 * 2, _cfg(convention="paper", eta=0.05)).delta
    b = compute_stage1(adapter, PAIRS, KEEP_40, _cfg(convention="paper", eta=0.1)).delta
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)


def test_solve_map_solves_the_scaled_system():
    """M (a S_mm + b S_kk + r I) = a S_sm + b S_kk + r I for random statistics, with a, b written out here."""
    from trce_ray.stage1.closed_form import StreamStatistics

    g = torch.Generator().manual_seed(0)
    d, n, q = 6, 4, 9
    em, es, ek = (torch.randn(k, d, generator=g, dtype=torch.float64) for k in (n, n, q))
    stats = StreamStatistics(es.T @ em, em.T @ em, ek.T @ ek, n=n, q=q, n_prompts=2, q_prompts=3)
    eye = torch.eye(d, dtype=torch.float64)
    for convention, a, b in (
        ("paper", 1.0, 0.2),
        ("normalised", 1 / n, 0.2 / q),
        ("authors", 1 / 2, 0.2**2 / 3e4 * COCO_CAPTIONS_2014 / 3),
    ):
        m = solve_map(stats, 0.2, convention, ridge=1e-3)
        lhs = m @ (a * em.T @ em + b * ek.T @ ek + 1e-3 * eye)
        assert torch.allclose(lhs, a * es.T @ em + b * ek.T @ ek + 1e-3 * eye, rtol=0, atol=1e-10), convention
    with pytest.raises(TRCEError, match="unknown stage-1 convention 'uce'"):
        solve_map(stats, 0.2, "uce")


def test_config_convention_sets_preserved_tokens():
    assert _cfg().convention == "authors" and _cfg().preserve_tokens == "all"
    assert _cfg(convention="paper").preserve_tokens == "eot"  # Sec. 4.1: the first [EoT] of every prompt
    assert _cfg(convention="paper", preserve_tokens="all").preserve_tokens == "all"
    assert _cfg(convention="normalised").preserve_tokens == "all"
    from trce_ray.config import load_config

    base = {"model.path": "toy", "stage1.concept": "sexual"}
    with pytest.raises(ConfigError, match="convention 'authors' preserves every token position"):
        load_config(None, {**base, "stage1.convention": "authors", "stage1.preserve_tokens": "eot"})
    with pytest.raises(ConfigError, match="stage1.convention"):
        load_config(None, {**base, "stage1.convention": "uce"})


@pytest.mark.parametrize("convention", ["paper", "normalised", "authors"])
def test_large_eta_keeps_weights(tiny_pipe, convention):
    adapter = adapter_for(tiny_pipe)
    params = dict(adapter.denoiser.named_parameters())
    delta = compute_stage1(adapter, PAIRS, KEEP_40, _cfg(convention=convention, eta=1e8)).delta
    for name, w in delta.items():
        assert ((w - params[name].detach()).norm() / params[name].detach().norm()) < 1e-4


@pytest.mark.parametrize("convention, eta", [("paper", 1e-5), ("normalised", 1e-5), ("authors", 1e-3)])
def test_tiny_eta_maps_malicious_to_safe(tiny_pipe, convention, eta):  # authors: eta enters squared
    adapter = adapter_for(tiny_pipe)
    params = dict(adapter.denoiser.named_parameters())
    assert len(PAIRS) < 32  # fewer erase embeddings than dimensions: the map can be exact
    result = compute_stage1(adapter, PAIRS, KEEP_40, _cfg(convention=convention, eta=eta))
    hm, im = _embed(tiny_pipe, [p.erase for p in PAIRS])
    hs, is_ = _embed(tiny_pipe, [p.target for p in PAIRS])
    em = torch.stack([hm[i, im[i]] for i in range(len(PAIRS))])
    es = torch.stack([hs[i, is_[i]] for i in range(len(PAIRS))])
    for name, w_new in result.delta.items():
        w = params[name].detach().double()
        target = es @ w.T
        assert ((em @ w_new.double().T - target).norm() / target.norm()) < 1e-3
    assert result.diagnostics["erase_residual"] < 1e-3


def test_weights_outside_edited_kv_are_bitwise_unchanged(tiny_pipe):
    from trce_ray.artifacts import apply_delta

    before = {k: v.clone() for k, v in tiny_pipe.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in tiny_pipe.text_encoder.state_dict().items()}
    adapter = adapter_for(tiny_pipe)
    delta = compute_stage1(adapter, PAIRS, KEEP_40, _cfg()).delta
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
    cfg = _cfg(convention="paper")  # Eq. 5 as printed: 5 erase + 5 preserve [EoT] rows cannot span 32 dims
    with pytest.raises(TRCEError, match="ridge"):
        compute_stage1(adapter, PAIRS, KEEP, cfg)
    assert compute_stage1(adapter, PAIRS, KEEP, _cfg(convention="paper", ridge=1e-4)).delta
