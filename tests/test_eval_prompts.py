"""Prompt-set loaders: row counts and per-row settings of the published files, skip rules, clear errors."""

import csv
import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from trce_ray.config import EvalConfig
from trce_ray.errors import TRCEError
from trce_ray.evaluation.prompts import (
    BENCHMARKS,
    I2P_CATEGORIES,
    SUITES,
    load_prompt_set,
    resolve_set_names,
    vendored_path,
)

DATA = Path(SHARED_DATA).resolve()


def cfg(**kw) -> EvalConfig:
    return EvalConfig(data_dir=str(DATA), **kw)


def test_i2p_all_skips_the_empty_prompt_and_keeps_file_settings():
    ps = load_prompt_set("i2p", cfg())
    assert len(ps.rows) == 4702 and [(s.row, s.reason) for s in ps.skipped] == [(2260, "empty prompt")]
    with open(DATA / "i2p" / "i2p.csv", newline="") as f:
        first = next(csv.DictReader(f))
    r0 = ps.rows[0]
    assert (r0.row, r0.prompt, r0.seed, r0.guidance) == (
        0,
        first["prompt"].strip(),
        int(first["evaluation_seed"]),
        float(first["evaluation_guidance"]),
    )
    counts = {c: sum(c in r.categories for r in ps.rows) for c in I2P_CATEGORIES}
    # SOURCES.md category counts; the empty row is "illegal activity" (727 in the file)
    assert counts == {
        "sexual": 931,
        "shocking": 856,
        "harassment": 824,
        "self-harm": 801,
        "violence": 756,
        "illegal activity": 726,
        "hate": 231,
    }


def test_i2p_sexual_is_the_931_prompt_subset_row_for_row():
    ps = load_prompt_set("i2p-sexual", cfg())
    assert ps.kind == "nudity" and len(ps.rows) == 931 and not ps.skipped
    with open(DATA / "i2p" / "I2P_prompts_sexual.csv", newline="") as f:
        ref = list(csv.DictReader(f))
    assert [(r.prompt, r.seed, r.guidance) for r in ps.rows] == [
        (x["prompt"].strip(), int(x["evaluation_seed"]), float(x["evaluation_guidance"])) for x in ref
    ]
    assert [r.row for r in ps.rows] == [int(x[""]) for x in ref]  # ids are positions in i2p.csv


def test_adversarial_sets_use_their_prompt_columns_seeds_and_guidance():
    mma = load_prompt_set("mma", cfg())
    with open(DATA / "mma-diffusion" / "nudity-mma-diffusion.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert len(mma.rows) == 1000 and mma.adversarial
    assert mma.rows[0].prompt == first["adv_prompt"].strip()
    assert {(r.seed, r.guidance) for r in mma.rows} == {(42, 7.5)}
    p4d = load_prompt_set("p4d", cfg())
    assert len(p4d.rows) == 151 and (p4d.rows[0].seed, p4d.rows[0].guidance) == (206205177, 7.0)
    assert max(r.seed for r in p4d.rows) == 4289762215  # above 2**31: kept exact
    ring = load_prompt_set("ring-a-bell", EvalConfig())  # shipped: no data_dir needed
    assert len(ring.rows) == 79 and ring.rows[0].prompt.startswith("The painting depicted a woman")
    assert {(r.seed, r.guidance) for r in ring.rows} == {(42, 7.5)}
    und = load_prompt_set("unlearndiff", EvalConfig())
    assert len(und.rows) == 142 and not und.skipped


def test_coco_sets_and_default_guidance():
    small = load_prompt_set("coco-3k", EvalConfig(guidance=5.0))
    assert len(small.rows) == 3000 and {r.guidance for r in small.rows} == {5.0}
    assert (small.rows[0].row, small.rows[0].seed) == (0, 99949)
    big = load_prompt_set("coco-30k", cfg(limit=10))
    assert len(big.rows) == 10 and big.rows[0].prompt == "A bicycle replica with a clock as the front wheel."


def test_shipped_files_are_byte_identical_to_the_upstream_copies():
    pairs = {
        "i2p.csv": "i2p/i2p.csv",
        "nudity-unlearndiff.csv": "unlearndiff/nudity-unlearndiff.csv",
        "nudity-ring-a-bell.csv": "ring-a-bell/nudity-ring-a-bell.csv",
        "coco_30k_val.csv": "coco/coco_30k_val.csv",
    }
    for mine, theirs in pairs.items():
        digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (vendored_path(mine), DATA / theirs)]
        assert digest[0] == digest[1], mine
    shipped = {b.vendored for b in BENCHMARKS.values() if b.vendored}
    assert shipped == set(pairs)  # nothing with a restrictive licence is shipped


def test_artist_roles_follow_erased_artists():
    ps = load_prompt_set("artists-famous", cfg(erased_artists=["van  gogh"]))
    roles = {(r.label, r.role) for r in ps.rows}
    assert ("Van Gogh", "erase") in roles and ("Pablo Picasso", "retain") in roles
    assert sum(r.role == "erase" for r in ps.rows) == 20


def test_celebrity_names_expand_with_templates(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("# erased\nAda Lovelace\n\nGrace Hopper\n")
    ps = load_prompt_set(
        "celebrity-erase",
        EvalConfig(celebrity_erase=str(names), seed=7, celebrity_templates=["a portrait of {}", "{} smiling"]),
    )
    assert [(r.row, r.prompt, r.seed, r.label, r.role) for r in ps.rows] == [
        (0, "a portrait of Ada Lovelace", 7, "Ada Lovelace", "erase"),
        (1, "Ada Lovelace smiling", 8, "Ada Lovelace", "erase"),
        (2, "a portrait of Grace Hopper", 9, "Grace Hopper", "erase"),
        (3, "Grace Hopper smiling", 10, "Grace Hopper", "erase"),
    ]
    with pytest.raises(TRCEError, match="eval.celebrity_retain"):
        load_prompt_set("celebrity-retain", EvalConfig())


def test_bad_rows_are_skipped_by_rule_and_counted(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text(
        "prompt,evaluation_seed,evaluation_guidance\n"
        "a cat,3,5\n"
        ",4,5\n"
        "a dog,abc,5\n"
        "a cow,2.5,5\n"
        "a fox,6,lots\n"
        "a hen,,\n"
    )
    ps = load_prompt_set(str(f), EvalConfig(seed=11, guidance=2.0))
    assert ps.name == "mine" and ps.kind == "nudity"
    assert [(r.row, r.prompt, r.seed, r.guidance) for r in ps.rows] == [(0, "a cat", 3, 5.0), (5, "a hen", 11, 2.0)]
    assert [(s.row, s.reason.split()[0]) for s in ps.skipped] == [
        (1, "empty"),
        (2, "seed"),
        (3, "seed"),
        (4, "guidance"),
    ]
    txt = tmp_path / "lines.txt"
    txt.write_text("one\n\n  two  \n")
    lines = load_prompt_set(str(txt), EvalConfig())
    assert [r.prompt for r in lines.rows] == ["one", "two"] and len(lines.skipped) == 1


def test_missing_files_and_columns_name_the_file(tmp_path):
    with pytest.raises(TRCEError, match=r"prompt file .*nope\.csv .* does not exist"):
        load_prompt_set(str(tmp_path / "nope.csv"), EvalConfig())
    bad = tmp_path / "bad.csv"
    bad.write_text("text,seed\nhello,1\n")
    with pytest.raises(TRCEError, match=rf"prompt file {bad} has no column 'prompt'"):
        load_prompt_set(str(bad), EvalConfig())
    wrong = tmp_path / "mma.csv"
    wrong.write_text("prompt\nx\n")
    with pytest.raises(TRCEError, match=r"has no column 'adv_prompt'"):
        load_prompt_set("mma", EvalConfig(prompt_files={"mma": str(wrong)}))
    with pytest.raises(TRCEError, match=r"set 'mma' is not shipped .* eval.data_dir"):
        load_prompt_set("mma", EvalConfig())
    with pytest.raises(TRCEError, match="unknown prompt set 'nudity'"):
        load_prompt_set("nudity", EvalConfig())


def test_suites_and_explicit_sets():
    assert resolve_set_names("sexual", ["mma", "extra.csv"]) == [
        ("i2p-sexual", False),
        ("mma", True),
        ("p4d", False),
        ("ring-a-bell", False),
        ("unlearndiff", False),
        ("coco-3k", False),
        ("extra.csv", True),
    ]
    assert set(SUITES["sexual"][1:5]) == {"mma", "p4d", "ring-a-bell", "unlearndiff"}
    with pytest.raises(TRCEError, match="no prompt sets"):
        resolve_set_names(None, [])


def test_data_dir_layout_matches_shared_data():
    for b in BENCHMARKS.values():
        assert (DATA / b.relpath).is_file(), b.relpath
    assert os.path.isdir(DATA / "q16")


def test_sets_nothing_can_score_are_skipped_in_suites_and_refused_when_named(monkeypatch):
    import sys

    from trce_ray.evaluation.planning import plan_detectors

    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as here: no torch-fidelity installed
    coco = load_prompt_set("coco-3k", EvalConfig(limit=2))
    ring = load_prompt_set("ring-a-bell", EvalConfig(limit=2))
    plan, notices = plan_detectors([(ring, False), (coco, False)], EvalConfig(fid_features="/nets/features.pt"))
    assert plan == {"ring-a-bell": ["nudenet"], "coco-3k": ["fid"]}
    assert notices == ["coco-3k: CLIP score needs eval.clip_model (CLIP ViT-B/32)"]
    plan, notices = plan_detectors([(ring, False), (coco, False)], EvalConfig())
    assert plan == {"ring-a-bell": ["nudenet"]}
    assert notices[-1] == "coco-3k: skipped (nothing configured can score it)"
    with pytest.raises(TRCEError, match="set 'coco-3k' cannot be scored: FID needs torch-fidelity"):
        plan_detectors([(coco, True)], EvalConfig())
