"""The toy world: rendering, captions, the vocabulary split, packs and benchmark plumbing (no model needed)."""

import math
import re

import numpy as np
import pytest
import torch

from trce_ray.concepts import builtin_packs, expand_pack, load_pack
from trce_ray.evaluation.fid import frechet_distance
from trce_ray.toy import packs, world
from trce_ray.toy.bench import prompt_sets, score


def test_render_puts_the_object_colour_at_the_centre_and_background_in_the_corner():
    scene = world.Scene(
        colour=0, shape=0, cx=16.0, cy=16.0, radius=8.0, rgb=(200.0, 30.0, 40.0), background=(20.0, 20.0, 20.0)
    )
    img = (world.render(scene) + 1) * 127.5
    np.testing.assert_allclose(img[:, 16, 16], [200, 30, 40], atol=1e-3)
    np.testing.assert_allclose(img[:, 0, 0], [20, 20, 20], atol=1e-3)


@pytest.mark.parametrize(
    "shape, area",
    [
        ("circle", math.pi * 64),
        ("square", (1.7 * 8) ** 2),
        ("cross", 2 * (2 * 8) * (0.7 * 8) - (0.7 * 8) ** 2),
    ],
)
def test_rendered_coverage_matches_the_shape_area(shape, area):
    scene = world.Scene(0, world.SHAPES.index(shape), 16.0, 16.0, 8.0, (255.0, 255.0, 255.0), (0.0, 0.0, 0.0))
    assert world._mask(scene).sum() == pytest.approx(area, rel=0.03)


def test_scenes_stay_inside_the_image_and_cover_every_attribute():
    rng = np.random.default_rng(0)
    scenes = [world.sample_scene(rng) for _ in range(2000)]
    assert {s.colour for s in scenes} == set(range(len(world.COLOURS)))
    assert {s.shape for s in scenes} == set(range(len(world.SHAPES)))
    assert all(s.radius + 1 <= s.cx <= world.SIZE - s.radius - 1 for s in scenes)
    assert len(world.COLOURS) >= 6 and len(world.SHAPES) >= 4


def test_captions_name_the_scene_and_about_ten_percent_are_empty():
    from trce_ray.concepts import load_templates

    rng = np.random.default_rng(1)
    templates = load_templates()
    n, empty = 4000, 0
    for _ in range(n):
        scene = world.sample_scene(rng)
        cap = world.caption(rng, scene, templates)
        if cap == "":
            empty += 1
            continue
        colour = world.COLOURS[scene.colour]
        vocab = (*world.pack_words(colour), *world.held_out_paraphrases(colour))
        others = [w for c in world.COLOURS if c != colour for w in world.adjectives(c)]
        # a caption never names another colour (word-level, so "red" does not match inside "shred")
        assert not any(re.search(rf"\b{re.escape(w)}\b", cap) for w in others), cap
        named = any(v in cap for v in vocab)
        shaped = any(w in cap for w in world.SHAPE_WORDS[world.SHAPES[scene.shape]])
        assert named or shaped, cap
    # binomial(4000, 0.1): sd 19, so +-4 sd is 324..476
    assert 324 <= empty <= 476


def test_vocabulary_split_is_disjoint():
    for colour in world.COLOURS:
        assert not set(world.held_out_paraphrases(colour)) & set(world.pack_words(colour))


def _held_out_nouns() -> list[str]:
    """'the color of a fire truck' -> 'fire truck': the part that makes a paraphrase recognisable."""
    return [re.sub(r"^the color of (an? |the )?", "", p) for c in world.COLOURS for p in world.held_out_paraphrases(c)]


def test_no_held_out_paraphrase_appears_in_any_toy_pack_or_preservation_file():
    toy = [name for name in builtin_packs() if name.startswith("toy-")]
    assert len(toy) == len(world.ERASABLE)
    nouns = _held_out_nouns()
    for name in toy:
        text = (packs.PACKS_DIR / f"{name}.yaml").read_text().lower()
        assert not [n for n in nouns if n in text], name
        pack = load_pack(name)
        for phrase, _ in pack.phrases:
            assert not [n for n in nouns if n in phrase.lower()]
    for colour in world.ERASABLE:
        text = packs.preserve_file(colour).read_text().lower()
        assert not [n for n in nouns if n in text], colour
        assert not re.search(rf"\b{colour}\b", text), f"preservation prompts for {colour} name {colour}"


def test_shipped_packs_and_preservation_files_match_the_generator(tmp_path):
    packs.write_all(tmp_path)
    for colour in world.ERASABLE:
        shipped = (packs.PACKS_DIR / f"toy-{colour}.yaml").read_text()
        assert shipped == (tmp_path / "packs" / f"toy-{colour}.yaml").read_text(), "run python -m trce_ray.toy.packs"
        assert packs.preserve_file(colour).read_text() == (tmp_path / "prompts" / f"preserve-{colour}.txt").read_text()


def test_toy_pack_expands_to_the_papers_300_prompts_anchored_to_gray():
    pairs = expand_pack(load_pack("toy-red"), n_templates=15)
    assert len(pairs) == 300
    assert all("gray" in p.target and "gray" not in p.erase for p in pairs)
    assert pairs[0].erase[slice(*pairs[0].erase_key)] == "a red circle"


def test_prompt_sets_have_distinct_seeds_and_flag_neighbours():
    sets = prompt_sets("red", n_direct=8, n_paraphrase=8, n_per_colour=4, seed=3)
    seeds = [r.seed for rows in sets.values() for r in rows]
    assert len(seeds) == len(set(seeds)) == 8 + 8 + 4 * (len(world.COLOURS) - 1)
    assert sets == prompt_sets("red", 8, 8, 4, seed=3)
    assert all(r.colour == world.COLOURS.index("red") for r in sets["direct"] + sets["paraphrase"])
    assert all(any(h in r.prompt for h in world.held_out_paraphrases("red")) for r in sets["paraphrase"])
    near = {world.COLOURS[r.colour] for r in sets["preservation"] if r.neighbour}
    assert near == set(world.neighbours("red")) == {"orange", "purple"}


def test_score_from_known_predictions():
    sets = prompt_sets("red", n_direct=4, n_paraphrase=4, n_per_colour=2)
    red = world.COLOURS.index("red")
    pres = sets["preservation"]
    colour = torch.tensor([r.colour for r in pres])
    colour[0] = red  # one wrong colour among the preservation rows
    feats = torch.randn(len(pres), 8, generator=torch.Generator().manual_seed(0))
    preds = {
        "direct": {"colour": torch.tensor([red, red, red, 3]), "shape": torch.tensor([0, 1, 2, 0])},
        "paraphrase": {"colour": torch.tensor([red, 1, 1, 1]), "shape": torch.zeros(4, dtype=torch.long)},
        "preservation": {"colour": colour, "shape": torch.tensor([r.shape for r in pres]), "features": feats},
    }
    m = score("red", sets, preds)
    assert m["direct"] == 0.75 and m["paraphrase"] == 0.25 and m["fid_gen"] == 0.0
    assert m["preservation"] == pytest.approx(1 - 1 / len(pres))
    assert m["agreement"] == m["preservation"]
    assert m["direct_shape"] == 0.75


def test_frechet_distance_known_answers():
    a = torch.randn(300, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, -2.0, 0, 0, 0, 0.5], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-9)
    # b = 2a + c: S_b = 4 S_a, so tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) = tr(S_a)
    b = 2 * a + shift
    expected = float((a.mean(0) - b.mean(0)).pow(2).sum() + torch.trace(torch.cov(a.T)))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
