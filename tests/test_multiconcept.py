"""Many concepts in one model: --concept repeatable, names files with template families, --retain, one joint
closed-form solve (against Eq. 5 written out in float64 over the stacked concepts), each concept's [EoT] mapped to
its own anchor, and bad input as one sentence with nothing written."""

import json

import pytest

from tests.test_stage1 import KEEP, KEEP_40, _assert_close, _embed, _kv_weights, reference
from trce_ray.cli import main
from trce_ray.concepts import PromptPair
from trce_ray.config import Stage1Config, load_config
from trce_ray.errors import ConfigError, TRCEError
from trce_ray.models import adapter_for
from trce_ray.stage1.run import compute_stage1, stage1_inputs

PACK = "name: nude\nanchor: a person wearing clothes\nphrases: [nudity, a naked woman]\n"
NAMES = "Tom Cruise\nMarilyn Monroe\n"
# stage1.templates: 2 -> "a photo of {}", "an image of {}" for packs; "a photo of {}", "a portrait of {}" for person
STACKED = [
    PromptPair("a photo of nudity", "a photo of a person wearing clothes"),
    PromptPair("an image of nudity", "an image of a person wearing clothes"),
    PromptPair("a photo of a naked woman", "a photo of a person wearing clothes"),
    PromptPair("an image of a naked woman", "an image of a person wearing clothes"),
    PromptPair("a photo of Tom Cruise", "a photo of a man"),
    PromptPair("a portrait of Tom Cruise", "a portrait of a man"),
    PromptPair("a photo of Marilyn Monroe", "a photo of a man"),
    PromptPair("a portrait of Marilyn Monroe", "a portrait of a man"),
]


@pytest.fixture
def concept_files(tmp_path):
    (tmp_path / "nude.yaml").write_text(PACK)
    (tmp_path / "celebs.txt").write_text(NAMES)
    return tmp_path / "nude.yaml", tmp_path / "celebs.txt"


def _s1(files, **kw):
    pack, names = files
    return Stage1Config(concepts=[str(pack), {"names": str(names), "anchor": "a man"}], templates=2, **kw)


def test_concepts_expand_and_stack_in_order(concept_files):
    concepts, pairs, _ = stage1_inputs(_s1(concept_files))
    assert [c.name for c in concepts] == ["nude", "celebs"]
    assert [(p.erase, p.target) for p in pairs] == [(p.erase, p.target) for p in STACKED]


@pytest.mark.parametrize(
    "convention, keep, kw",
    [("paper", KEEP_40, {}), ("normalised", KEEP, {}), ("authors", KEEP, {"tokens": ["eot", "sot"]})],
)
def test_joint_solve_equals_eq5_over_stacked_concepts_in_float64(tiny_pipe, concept_files, convention, keep, kw):
    s1 = _s1(concept_files, convention=convention, eta=0.05, preserve_count=len(keep), **kw)
    _, pairs, _ = stage1_inputs(s1)
    got = compute_stage1(adapter_for(tiny_pipe), pairs, keep, s1).delta
    roles = tuple(kw.get("tokens", ["eot"]))
    _assert_close(got, reference(tiny_pipe, STACKED, keep, 0.05, convention, roles, s1.preserve_tokens))


def test_each_concepts_eot_maps_to_its_own_anchor_at_small_eta(tiny_pipe):
    """Two concepts with different anchors in one solve: as eta -> 0, W' e_m of every erase prompt's [EoT] equals W
    e_s of its OWN concept's anchor, and stays far from the other concept's anchor."""
    a = [PromptPair(f"a photo of {x}", "a photo of a cat") for x in ("nudity", "a naked woman", "pornography")]
    b = [PromptPair(f"a photo of {x}", "a photo of a bicycle") for x in ("Tom Cruise", "Marilyn Monroe", "Elvis")]
    cfg = Stage1Config(concept="sexual", convention="normalised", eta=1e-4, preserve_tokens="eot")
    delta = compute_stage1(adapter_for(tiny_pipe), a + b, KEEP_40, cfg).delta
    hm, im = _embed(tiny_pipe, [p.erase for p in a + b])
    hs, is_ = _embed(tiny_pipe, [p.target for p in a + b])
    for name, w in _kv_weights(tiny_pipe).items():
        w2 = delta[name].double()
        for i in range(6):
            e_m, own = hm[i, im[i]], w @ hs[i, is_[i]]
            other = w @ hs[5 - i, is_[5 - i]]  # a row of the other concept
            assert (w2 @ e_m - own).norm() / own.norm() < 1e-4, (name, i)  # measured 9e-7
            assert (w2 @ e_m - other).norm() / other.norm() > 0.1, (name, i)  # measured >= 0.19


def test_repeated_concept_flag_keeps_every_concept_and_yaml_list_means_the_same(tmp_path):
    import argparse

    from trce_ray.cli.common import stage1_overrides
    from trce_ray.cli.erase import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["erase", "--concept", "toy-red", "--concept", "toy-blue", "--output", "x"])
    cfg = load_config(None, {"model.path": "toy", **stage1_overrides(args)})
    assert cfg.stage1.concepts == ["toy-red", "toy-blue"] and cfg.stage1.concept is None
    (tmp_path / "c.yaml").write_text("model: {path: toy}\nstage1: {concept: [toy-red, toy-blue]}\n")
    assert load_config(tmp_path / "c.yaml").stage1.concepts == ["toy-red", "toy-blue"]
    one = parser.parse_args(["erase", "--concept", "toy-red", "--output", "x"])
    assert load_config(None, {"model.path": "toy", **stage1_overrides(one)}).stage1.concept == "toy-red"


def test_retain_adds_names_over_the_same_templates(concept_files, tmp_path):
    (tmp_path / "keep.txt").write_text("Brad Pitt\n")
    s1 = _s1(concept_files, retain=str(tmp_path / "keep.txt"), preserve_count=3)
    _, _, keep = stage1_inputs(s1)
    assert len(keep) == 5 and keep[3:] == ["a photo of Brad Pitt", "a portrait of Brad Pitt"]


def test_erase_cli_writes_both_concepts(tiny_sd_dir, tmp_path, concept_files):
    out = tmp_path / "out"
    pack, names = concept_files
    argv = ["erase", "--model", tiny_sd_dir, "--concept", pack, "--concept", names, "--anchor", "a man"]
    argv += ["--templates", "2", "--set", "stage1.preserve_count=20", "--set", f"cache.root={tmp_path / 'c'}"]
    assert main([*map(str, argv), "--no-tracking", "--output", str(out)]) == 0
    prompts = json.loads((out / "prompts.json").read_text())
    assert list(zip(prompts["erase"], prompts["target"])) == [(p.erase, p.target) for p in STACKED]
    assert prompts["concepts"] == [{"name": "nude", "n_erase_prompts": 4}, {"name": "celebs", "n_erase_prompts": 4}]


def _bad(tmp_path):
    (tmp_path / "blank.txt").write_text("Tom Cruise\n\nElvis\n")
    (tmp_path / "dup.txt").write_text("Tom Cruise\nElvis\ntom cruise\n")
    (tmp_path / "celebs.txt").write_text(NAMES)
    (tmp_path / "keep.txt").write_text("Brad Pitt\nMarilyn Monroe\n")
    return {
        "duplicate concept": (["--concept", "sexual", "--concept", "sexual"], "concept 'sexual' is given twice"),
        "blank line": (["--concept", tmp_path / "blank.txt"], "has a blank line 2"),
        "duplicate line": (["--concept", tmp_path / "dup.txt"], "repeats 'tom cruise' (lines 1 and 3)"),
        "retained and erased": (
            ["--concept", tmp_path / "celebs.txt", "--retain", tmp_path / "keep.txt"],
            "'Marilyn Monroe' is both retained",
        ),
    }


@pytest.mark.parametrize("case", ["duplicate concept", "blank line", "duplicate line", "retained and erased"])
def test_bad_input_is_one_sentence_and_writes_nothing(case, tiny_sd_dir, tmp_path, capsys):
    argv, expected = _bad(tmp_path)[case]
    cache = tmp_path / "cache"
    argv = ["erase", "--model", tiny_sd_dir, *argv, "--set", f"cache.root={cache}", "--no-tracking"]
    assert main([*map(str, argv), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not cache.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_bad_concepts_fail_in_config_and_prompt_reading(tmp_path):
    with pytest.raises(ConfigError, match="'stage1': give stage1.concept or stage1.concepts, not both"):
        load_config(None, {"model.path": "toy", "stage1.concept": "sexual", "stage1.concepts": ["van-gogh"]})
    with pytest.raises(ConfigError, match="'stage1.concepts': concept 'sexual' is given twice"):
        load_config(None, {"model.path": "toy", "stage1.concepts": ["sexual", {"names": __file__}, "sexual"]})
    (tmp_path / "a.yaml").write_text(PACK)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "a.yaml").write_text(PACK)
    s1 = Stage1Config(concepts=[str(tmp_path / "a.yaml"), str(tmp_path / "b" / "a.yaml")])
    with pytest.raises(TRCEError, match="'nude' is given twice"):
        stage1_inputs(s1)
    with pytest.raises(TRCEError, match="the person family has only 15 templates"):
        (tmp_path / "n.txt").write_text("Elvis\n")
        stage1_inputs(Stage1Config(concept=str(tmp_path / "n.txt"), templates=20))
