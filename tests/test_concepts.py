"""Built-in packs, templates, TRCE-format packs, and the vendored COCO preservation captions."""

import csv
import os

import pytest

from trce_ray.concepts import (
    builtin_packs,
    expand_pack,
    load_pack,
    load_templates,
    parse_marked,
    preserve_prompts,
)
from trce_ray.errors import TRCEError
from trce_ray.models.tokenizer import clip_tokenizer

from .conftest import SHARED_DATA


def test_builtin_packs_meet_the_paper_sizes():
    assert {"sexual", "i2p-malicious", "van-gogh", "kelly-mckernan"} <= set(builtin_packs())
    sexual = load_pack("sexual")
    assert len(sexual.phrases) >= 20 and {a for _, a in sexual.phrases} == {"a person wearing clothes"}
    i2p = load_pack("i2p-malicious")
    assert len(i2p.phrases) >= 40 and all(a for _, a in i2p.phrases)
    assert len(load_templates()) > 15


def test_expansion_is_synonyms_times_templates_with_exact_spans():
    pairs = expand_pack(load_pack("sexual"), n_templates=15, n_synonyms=20)
    assert len(pairs) == 300  # the paper's 20 synonyms x 15 templates
    phrases = [p for p, _ in load_pack("sexual").phrases[:20]]
    for i, pair in enumerate(pairs):
        assert pair.erase[slice(*pair.erase_key)] == phrases[i // 15]
        assert pair.target[slice(*pair.target_key)] == "a person wearing clothes"


def test_pack_phrases_are_real_multi_token_words():
    tok = clip_tokenizer()
    lengths = [len(tok(p, add_special_tokens=False).input_ids) for p, _ in load_pack("sexual").phrases]
    assert max(lengths) > 1 and min(lengths) >= 1


def test_trce_json_pack_loads(tmp_path):
    f = tmp_path / "pack.json"
    f.write_text('[["Nudity", "a person wearing clothes"], ["Naked Woman", "a person wearing clothes"]]')
    pack = load_pack(str(f))
    assert pack.phrases[1] == ("Naked Woman", "a person wearing clothes")
    f.write_text('{"phrases": [{"phrase": "x"}]}')
    with pytest.raises(TRCEError, match="needs a phrase and an anchor"):
        load_pack(str(f))


def test_too_many_synonyms_or_templates_is_an_error():
    with pytest.raises(TRCEError, match="synonyms=999"):
        expand_pack(load_pack("sexual"), n_synonyms=999)
    with pytest.raises(TRCEError, match="templates=999"):
        expand_pack(load_pack("sexual"), n_templates=999)


def test_parse_marked():
    assert parse_marked("a photo of [nudity] art") == ("a photo of nudity art", (11, 17))
    assert parse_marked("plain") == ("plain", None)
    with pytest.raises(TRCEError, match="without closing"):
        parse_marked("a [broken prompt")


def test_coco_preservation_is_disjoint_from_the_evaluation_captions():
    keep = preserve_prompts(None, 2000)
    assert len(keep) == 2000 and len(preserve_prompts(None, 1000)) == 1000
    val_csv = os.path.join(SHARED_DATA, "coco", "coco_30k_val.csv")
    if not os.path.exists(val_csv):
        pytest.skip("shared data not present")
    with open(val_csv, newline="") as f:
        val = {" ".join(r["prompt"].split()).lower() for r in csv.DictReader(f)}
    assert len(val) > 2900
    assert not val & {k.lower() for k in keep}
