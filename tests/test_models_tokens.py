"""Token roles per segment on the big families: positions written out by hand for prompts with multi-token words
and a literal "!" (id 0 in SDXL's second tokenizer, which also pads with id 0)."""

import pytest
import torch

from trce_ray.concepts import PromptPair
from trce_ray.errors import TRCEError
from trce_ray.models import adapter_for
from trce_ray.models.tiny import tiny_pipeline
from trce_ray.models.tokenizer import clip_tokenizer
from trce_ray.models.tokens import key_positions, parse_roles
from trce_ray.stage1.embeddings import resolve_roles, role_rows

PROMPT = "a photo of nudity! with pornography"
# CLIP: <SoT> a photo of nu dity ! with por no graphy <EoT>   (positions 0..11)
CLIP_EOT, CLIP_LAST, CLIP_NUDITY, CLIP_PORN = 11, 10, [4, 5], [8, 9, 10]
# T5-style: ▁a ▁photo ▁of ▁nu d ity ! ▁with ▁por no graph y </s>   (positions 0..12, no start token)
T5_EOT, T5_LAST, T5_NUDITY, T5_PORN = 12, 11, [3, 4, 5], [8, 9, 10, 11]
NUDITY, PORN = (11, 17), (24, 35)


@pytest.fixture(scope="module")
def pipes():
    return {f: tiny_pipeline(f) for f in ("sdxl", "sd3", "flux")}


def test_clip_positions_by_hand():
    tok = clip_tokenizer()
    ids = tok(PROMPT).input_ids
    assert tok.convert_ids_to_tokens(ids)[4:6] == ["nu", "dity</w>"] and ids[6] == 256  # "!" is one token here
    assert key_positions(tok, PROMPT, NUDITY) == CLIP_NUDITY
    assert key_positions(tok, PROMPT, PORN) == CLIP_PORN


def test_sdxl_eot_is_found_in_each_half_from_its_own_ids(pipes):
    pipe = pipes["sdxl"]
    prompts = [PROMPT, "!", "nudity!!"]
    ids_1 = pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids_2 = pipe.tokenizer_2(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    # tokenizer_2: the literal "!" and the padding are both id 0; only the [EoT] id marks the end
    assert ids_2[0, 6] == 0 and ids_2[0, 12] == 0 and ids_2[0, CLIP_EOT] == 49407
    assert ids_2[1, 1] == 0 and ids_2[1, 2] == 49407 and ids_2[1, 3] == 0
    # "!!" is one BPE token in tokenizer 1 (as in OpenCLIP) but two "!" pad tokens in tokenizer_2 (diffusers#4153)
    assert [int((r == 49407).nonzero()[0]) for r in ids_1] == [CLIP_EOT, 2, 4]
    assert [int((r == 49407).nonzero()[0]) for r in ids_2] == [CLIP_EOT, 2, 5]
    seg = adapter_for(pipe).encode_text(prompts).segments
    # one segment; eot = the first row where both halves have read the whole prompt
    assert len(seg) == 1 and seg[0].eot_index.tolist() == [CLIP_EOT, 2, 5]
    pair = PromptPair("nudity!!", "a dressed person")  # target: <SoT> a dressed person <EoT>
    m, s = adapter_for(pipe).encode_text([pair.erase]), adapter_for(pipe).encode_text([pair.target])
    # last = the last content token of tokenizer 1 ("!!" at 3); all = 0..5
    assert role_rows([pair], {"clip": ["eot", "last"]}, m, s) == ([(0, 5), (0, 3)], [(0, 4), (0, 3)])
    assert role_rows([pair], {"clip": ["all"]}, m, s)[0] == [(0, p) for p in range(6)]
    # pad: the j-th position after each prompt's [EoT] (5 and 4), as many as both have (71 of 77 - 6)
    assert role_rows([pair], {"clip": ["pad"]}, m, s) == (
        [(0, p) for p in range(6, 77)],
        [(0, p) for p in range(5, 76)],
    )
    # the "first pad id" rule would have stopped at the literal "!" in half 2
    assert int((ids_2[0] == pipe.tokenizer_2.pad_token_id).nonzero()[0]) == 6 != CLIP_EOT


def test_t5_positions_by_hand(pipes):
    tok = pipes["flux"].tokenizer_2
    ids = tok(PROMPT).input_ids
    assert tok.convert_ids_to_tokens(ids)[T5_EOT] == "</s>" and len(ids) == T5_EOT + 1
    assert key_positions(tok, PROMPT, NUDITY) == T5_NUDITY
    assert key_positions(tok, PROMPT, PORN) == T5_PORN


def _rows(adapter, roles, erase=PROMPT, target="a photo of a person wearing clothes", keys=(NUDITY, None)):
    pair = PromptPair(erase, target, *keys)
    m, s = adapter.encode_text([pair.erase]), adapter.encode_text([pair.target])
    return role_rows([pair], resolve_roles(adapter, roles), m, s)


def test_role_rows_on_flux_t5(pipes):
    a = adapter_for(pipes["flux"])
    # target: ▁a ▁photo ▁of ▁a ▁person ▁wearing ▁clothes </s>  -> </s> at 7, last at 6
    assert _rows(a, ["eot"]) == ([(0, T5_EOT)], [(0, 7)])
    assert _rows(a, ["last"]) == ([(0, T5_LAST)], [(0, 6)])
    assert _rows(a, ["key"]) == ([(0, p) for p in T5_NUDITY], [(0, 7)] * 3)  # unmarked target: its </s>
    rows_m, rows_s = _rows(a, ["all"])
    assert rows_m == rows_s == [(0, p) for p in range(T5_EOT + 1)]  # position j with position j, </s> included
    assert _rows(a, None) == ([(0, T5_EOT), (0, T5_LAST)], [(0, 7), (0, 6)])  # FLUX default: eot + last


def test_role_rows_on_sd3_use_both_segments_of_one_sequence(pipes):
    a = adapter_for(pipes["sd3"])
    t5 = 77  # T5 rows follow the 77 CLIP rows of the joint sequence
    # target CLIP: <SoT> a photo of a person wearing clothes <EoT> -> 8; T5 as above -> 7, 6
    assert _rows(a, None) == ([(0, CLIP_EOT), (0, t5 + T5_EOT), (0, t5 + T5_LAST)], [(0, 8), (0, t5 + 7), (0, t5 + 6)])
    assert _rows(a, ["clip:sot", "t5:key"]) == (
        [(0, 0)] + [(0, t5 + p) for p in T5_NUDITY],
        [(0, 0)] + [(0, t5 + 7)] * 3,
    )
    # keywords marked on both sides: "a nude woman" -> "a dressed woman"; each is one token in both tokenizers
    rows_m, rows_s = _rows(a, ["key"], "a nude woman", "a dressed woman", keys=((2, 6), (2, 9)))
    assert rows_m == rows_s == [(0, 2), (0, t5 + 1)]  # <SoT> a [nude] woman / ▁a [▁nude] ▁woman


def test_sdxl_roles_and_key_without_mark():
    a = adapter_for(tiny_pipeline("sdxl"))
    assert _rows(a, ["eot", "last", "sot"]) == ([(0, 11), (0, 10), (0, 0)], [(0, 8), (0, 7), (0, 0)])
    assert _rows(a, ["key"], keys=(PORN, None)) == ([(0, p) for p in CLIP_PORN], [(0, 8)] * 3)
    with pytest.raises(TRCEError, match="token role 'key' needs the keyword marked: erase prompt 1"):
        _rows(a, ["key"], keys=(None, None))


def test_pooled_stream_has_one_row_per_prompt(pipes):
    a = adapter_for(pipes["flux"])
    pair = PromptPair(PROMPT, "a person", NUDITY)
    m, s = a.encode_text([pair.erase], 1), a.encode_text([pair.target], 1)
    assert m.pooled and m.hidden.shape == (1, 1, 32)
    assert role_rows([pair], {"t5": ["eot", "key", "all"]}, m, s) == ([(0, 0)], [(0, 0)])


def test_role_errors_explain_the_segments():
    with pytest.raises(TRCEError, match=r"'sot' does not exist on the t5 segment; T5 roles are: eot \(the </s>"):
        parse_roles(["sot"], ("t5",), {"t5": ("eot",)})
    with pytest.raises(TRCEError, match=r"'t5:sot' |'sot' does not exist on the t5 segment"):
        parse_roles(["t5:sot"], ("clip", "t5"), {"clip": ("eot",), "t5": ("eot",)})
    with pytest.raises(TRCEError, match=r"'pad' does not exist on the t5 segment"):
        parse_roles(["t5:pad"], ("clip", "t5"), {"clip": ("eot",), "t5": ("eot",)})
    assert parse_roles(["pad"], ("clip", "t5"), {"clip": ("eot",), "t5": ("last",)})["t5"] == ["last"]
    with pytest.raises(TRCEError, match="names the t5 segment, but this model's text has only clip"):
        parse_roles(["t5:last"], ("clip",), {"clip": ("eot",)})
    # a bare role applies where it exists: sot on SD3 goes to CLIP only; an unnamed segment keeps its default
    assert parse_roles(["sot"], ("clip", "t5"), {"clip": ("eot",), "t5": ("last",)}) == {
        "clip": ["sot"],
        "t5": ["last"],
    }
    assert parse_roles(["t5:all"], ("clip", "t5"), {"clip": ("eot",), "t5": ("last",)}) == {
        "clip": ["eot"],
        "t5": ["all"],
    }


def test_empty_prompt_last_falls_back_to_eot(pipes):
    a = adapter_for(pipes["flux"])
    rows_m, rows_s = _rows(a, ["last"], erase="", target="", keys=(None, None))
    assert rows_m == rows_s == [(0, 0)]  # "" is just </s>
    assert torch.equal(a.encode_text([""]).segments[0].input_ids[0, :2], torch.tensor([1, 0]))


def test_config_token_roles():
    from pydantic import ValidationError

    from trce_ray.config import Stage1Config

    assert Stage1Config(concept="sexual").tokens is None  # the family's defaults
    mapping = Stage1Config(concept="sexual", tokens={"clip": ["eot"], "t5": "last"})
    assert mapping.tokens == ["clip:eot", "t5:last"]
    assert Stage1Config(concept="sexual", tokens="t5:all").tokens == ["t5:all"]
    with pytest.raises(ValidationError, match="unknown token role 'first'; choose from eot, last, key, all, sot"):
        Stage1Config(concept="sexual", tokens=["first"])
    with pytest.raises(ValidationError, match="unknown token segment 't6' in 't6:eot'; segments are clip, t5"):
        Stage1Config(concept="sexual", tokens=["t6:eot"])
