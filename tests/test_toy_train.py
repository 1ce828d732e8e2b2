"""Toy training is a pure function of its recipe: same seed, bit-identical weights; another seed, other weights."""

import pytest
import torch
from safetensors.torch import load_file

from trce_ray.cli import main
from trce_ray.errors import ConfigError
from trce_ray.toy.train import CLASSIFIER_FILE, CONFIG_FILE, PIPELINE_DIR, ToyTrainConfig

TINY = [
    "arch.vae_channels=[16, 16]",
    "arch.unet_channels=[16, 32]",
    "arch.text_dim=16",
    "arch.text_layers=1",
    "arch.text_heads=2",
    "vae_steps=2",
    "vae_batch=4",
    "dataset_size=16",
    "unet_steps=3",
    "unet_batch=4",
    "clf_steps=2",
    "clf_batch=4",
    "warmup=2",
    "log_every=1",
]


def _train(out, seed):
    args = ["toy", "train", "--output", str(out), "--seed", str(seed), "--no-progress"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0


def _weights(folder):
    tensors = {}
    for f in sorted(folder.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            tensors[f"{f.relative_to(folder)}:{k}"] = v
    return tensors


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("toytrain")
    _train(root / "a", 7)
    _train(root / "b", 7)
    _train(root / "c", 8)
    return root


def test_same_seed_gives_bit_identical_weights(runs):
    a, b = _weights(runs / "a"), _weights(runs / "b")
    assert set(a) == set(b) and len(a) > 50
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_seed_gives_other_weights(runs):
    a, c = _weights(runs / "a"), _weights(runs / "c")
    trained = [k for k in a if "unet" in k and k.endswith(".weight") and a[k].numel() > 16]
    assert trained and all(not torch.equal(a[k], c[k]) for k in trained)


def test_output_layout_and_recipe_round_trip(runs):
    out = runs / "a"
    assert (out / PIPELINE_DIR / "model_index.json").is_file()
    assert (out / CLASSIFIER_FILE).is_file()
    recipe = ToyTrainConfig.load(out / CONFIG_FILE)
    assert recipe.seed == 7 and recipe.arch.vae_channels == (16, 16) and recipe.unet_steps == 3
    # stored in float16, as the shipped weights are
    unet = load_file(str(out / PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in unet.values()} == {torch.float16}


def test_existing_output_is_refused_without_overwrite(runs, capsys):
    before = sorted(p.name for p in (runs / "a").iterdir())
    assert main(["toy", "train", "--output", str(runs / "a"), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in (runs / "a").iterdir()) == before


def test_bad_recipe_names_the_field():
    with pytest.raises(ConfigError, match="unet_steps"):
        ToyTrainConfig.load(None, {"unet_steps": 0})
    with pytest.raises(ConfigError, match="arch.colour"):
        ToyTrainConfig.load(None, {"arch.colour": 3})
