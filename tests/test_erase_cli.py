"""`trce-ray erase` end to end on a tiny model: files written, delta reproduces outputs, bad input leaves nothing."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from trce_ray import load_erased
from trce_ray.cli import main
from trce_ray.config import load_config
from trce_ray.models import adapter_for, load_pipeline

SMALL = ["--templates", "2", "--synonyms", "3", "--set", "stage1.preserve_count=20"]


def _run(*argv):
    return main(["erase", *map(str, argv)])


def _nothing_written(parent, name):
    return not (parent / name).exists() and not any(p.name.startswith(f".{name}.partial") for p in parent.iterdir())


def test_erase_writes_delta_config_and_prompts(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    assert _run("--model", tiny_sd_dir, "--concept", "sexual", "--output", out, *SMALL) == 0
    delta = load_file(out / "stage1.safetensors")
    pipe = load_pipeline(str(tiny_sd_dir))
    assert set(delta) == set(adapter_for(pipe).edit_targets())
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight" in delta
    prompts = json.loads((out / "prompts.json").read_text())
    assert len(prompts["erase"]) == len(prompts["target"]) == 6 and len(prompts["preserve"]) == 20
    assert prompts["erase"][0] == "a photo of nudity" and prompts["target"][0] == "a photo of a person wearing clothes"
    cfg = load_config(out / "config.yaml")
    assert cfg.stage1.templates == 2 and cfg.model.path == str(tiny_sd_dir)
    summary = json.loads((out / "stage1_summary.json").read_text())
    assert summary["n_edited_matrices"] == len(delta)


def test_saved_delta_reproduces_edited_pipeline_exactly(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    assert _run("--model", tiny_sd_dir, "--concept", "sexual", "--save-pipeline", "--output", out, *SMALL) == 0
    edited = load_pipeline(str(out / "pipeline"))
    rebuilt = load_erased(str(out))  # base model from config.yaml + stage1.safetensors
    base = load_pipeline(str(tiny_sd_dir))

    def image(pipe):
        g = torch.Generator().manual_seed(3)
        return pipe("a photo of nudity", num_inference_steps=3, generator=g, output_type="np").images

    a, b, c = image(edited), image(rebuilt), image(base)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # the edit changed the output


def test_yaml_config_and_flag_precedence(tiny_sd_dir, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        yaml.safe_dump({"model": {"path": str(tiny_sd_dir)}, "stage1": {"concept": "sexual", "eta": 0.5}})
    )
    out = tmp_path / "run"
    assert (
        _run("--config", cfg_file, "--eta", "0.02", "--token", "eot", "--token", "key", "--output", out, *SMALL) == 0
    )
    cfg = load_config(out / "config.yaml")
    assert cfg.stage1.eta == 0.02 and cfg.stage1.tokens == ["eot", "key"]


def test_prompt_files_with_marked_keywords(tiny_sd_dir, tmp_path):
    (tmp_path / "e.txt").write_text("a photo of [nudity]\na [naked] woman\n\n")
    (tmp_path / "t.txt").write_text("a photo of [clothes]\na [dressed] woman\n")
    out = tmp_path / "run"
    rc = _run(
        "--model",
        tiny_sd_dir,
        "--erase-prompts",
        tmp_path / "e.txt",
        "--target-prompts",
        tmp_path / "t.txt",
        "--token",
        "key",
        "--output",
        out,
    )
    assert rc == 0
    assert json.loads((out / "prompts.json").read_text())["erase"] == ["a photo of nudity", "a naked woman"]


def _bad_cases(tmp_path, model):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "one.txt").write_text("a photo of nudity\n")
    (tmp_path / "two.txt").write_text("a\nb\n")
    (tmp_path / "bad.yaml").write_text("model: {path: x}\nstage1: {concept: sexual, colour: red}\n")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "model_index.json").write_text("{}")
    (pickled / "unet").mkdir()
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    return {
        "unknown key": (
            ["--model", model, "--concept", "sexual", "--set", "stage1.colour=red"],
            "unknown config key 'stage1.colour'",
        ),
        "unknown key in yaml": (["--config", tmp_path / "bad.yaml"], "unknown config key 'stage1.colour'"),
        "wrong type": (["--model", model, "--concept", "sexual", "--set", "stage1.eta=abc"], "'stage1.eta'"),
        "eta <= 0": (["--model", model, "--concept", "sexual", "--eta", "0"], "eta must be > 0"),
        "empty prompt set": (
            ["--model", model, "--erase-prompts", tmp_path / "empty.txt", "--target-prompts", tmp_path / "empty.txt"],
            "is empty",
        ),
        "missing prompt file": (
            ["--model", model, "--erase-prompts", tmp_path / "nope.txt", "--target-prompts", tmp_path / "one.txt"],
            "nope.txt does not exist",
        ),
        "unpaired files": (
            ["--model", model, "--erase-prompts", tmp_path / "one.txt", "--target-prompts", tmp_path / "two.txt"],
            "has 1 prompts but",
        ),
        "missing model path": (["--model", tmp_path / "no-model", "--concept", "sexual"], "does not exist"),
        "pickle weights": (["--model", pickled, "--concept", "sexual"], "pickle weights"),
        "unknown pack": (["--model", model, "--concept", "nudes-galore"], "unknown concept pack 'nudes-galore'"),
        "unknown token role": (
            ["--model", model, "--concept", "sexual", "--token", "eos"],
            "unknown token role 'eos'",
        ),
        "key without marks": (
            [
                "--model",
                model,
                "--erase-prompts",
                tmp_path / "one.txt",
                "--target-prompts",
                tmp_path / "one.txt",
                "--token",
                "key",
            ],
            "needs the keyword marked",
        ),
        "no model": (["--concept", "sexual"], "'model' is required"),
    }


CASES = [
    "unknown key",
    "unknown key in yaml",
    "wrong type",
    "eta <= 0",
    "empty prompt set",
    "missing prompt file",
    "unpaired files",
    "missing model path",
    "pickle weights",
    "unknown pack",
    "unknown token role",
    "key without marks",
    "no model",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_error_and_writes_nothing(case, tiny_sd_dir, tmp_path, capsys):
    argv, message = _bad_cases(tmp_path, tiny_sd_dir)[case]
    assert _run(*argv, "--output", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert _nothing_written(tmp_path, "out")


def test_failure_mid_run_leaves_no_folder(tiny_sd_dir, tmp_path, monkeypatch):
    import trce_ray.stage1.run as stage1_run

    def boom(*a, **k):
        raise RuntimeError("simulated crash during the solve")

    monkeypatch.setattr(stage1_run, "compute_stage1", boom)
    with pytest.raises(RuntimeError):
        _run("--model", tiny_sd_dir, "--concept", "sexual", "--output", tmp_path / "out", *SMALL)
    assert _nothing_written(tmp_path, "out")


def test_existing_output_needs_overwrite(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run("--model", tiny_sd_dir, "--concept", "sexual", "--output", out, *SMALL) == 0
    assert _run("--model", tiny_sd_dir, "--concept", "sexual", "--output", out, *SMALL) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        _run("--model", tiny_sd_dir, "--concept", "sexual", "--output", out, "--overwrite", "--eta", "0.5", *SMALL)
        == 0
    )
    assert load_config(out / "config.yaml").stage1.eta == 0.5
