"""The demo over several colours and generation seeds: each colour's entry is exactly that colour's own demo, seeds
pair each row with the original's images of the same seed, and the summary prints one line per colour."""

import json
import statistics

import pytest
import yaml

from trce_ray.cli import main
from trce_ray.toy import rows as toy_rows
from trce_ray.toy.demo import ToyDemoConfig
from trce_ray.toy.summary import format_summary, mean_spread
from trce_ray.toy.world import ERASABLE

SMALL = ["--set", "n_direct=4", "--set", "n_paraphrase=4", "--set", "n_per_colour=1", "--set", "steps=4"]
QUIET = [*SMALL, "--no-progress", "--no-tracking"]
TWO_STEPS = ["--set", "steps=2"]  # where only equality matters, not what the images show


def _demo(out, *args) -> dict:
    assert main(["toy", "demo", "--output", str(out), *QUIET, *args]) == 0
    return json.loads((out / "results.json").read_text())


def _without_timings(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "timings_s"}


def test_each_colour_entry_is_that_colours_own_demo(tmp_path, capsys):
    both = _demo(tmp_path / "both", "--target", "red,blue", "--rows", "TRCE(T)")
    red = _demo(tmp_path / "red", "--target", "red", "--rows", "TRCE(T)")
    assert both["targets"] == ["red", "blue"] and list(both["colours"]) == ["red", "blue"]
    assert _without_timings(both["colours"]["red"]) == _without_timings(red)
    # the colour's folder is a complete single-colour demo, erased with that colour's pack
    assert json.loads((tmp_path / "both" / "red" / "results.json").read_text())["rows"] == red["rows"]
    blue_cfg = yaml.safe_load((tmp_path / "both" / "blue" / "TRCE(T)" / "config.yaml").read_text())
    assert blue_cfg["stage1"]["concept"] == "toy-blue"
    assert both["colours"]["blue"]["rows"]["TRCE(T)"]["direct"] > both["colours"]["red"]["rows"]["TRCE(T)"]["direct"]
    out = capsys.readouterr().out
    summary = [line.split()[0] for line in out.splitlines()[3:5]]
    assert summary == ["red", "blue"] and both["summary"] in out
    assert "0/0/" in out.splitlines()[3]  # red is erased: direct and paraphrase 0 %


def _identity_row(ctx):
    """An erased row that changes nothing: its figures must equal the original's, FID_gen 0, on every seed."""
    ctx.folder.mkdir()
    return ctx.base


def test_seeds_score_each_row_against_the_original_of_the_same_seed(tmp_path, monkeypatch):
    monkeypatch.setitem(toy_rows.ROWS, "same", _identity_row)
    many = _demo(tmp_path / "many", "--rows", "same", "--seeds", "3", "5", *TWO_STEPS)
    one = _demo(tmp_path / "one", "--rows", "same", "--seed", "5", *TWO_STEPS)
    assert many["seeds"] == [3, 5] and "seeds" not in one and "spread" not in one
    assert many["per_seed"]["5"]["rows"] == one["rows"]
    for seed in ("3", "5"):
        rows = many["per_seed"][seed]["rows"]
        assert {**rows["same"], "fid_gen": 0} == {**rows["original"], "fid_gen": 0}
        assert rows["same"]["fid_gen"] == pytest.approx(0.0, abs=1e-3)  # sqrtm of a rank-deficient covariance
    for key, value in many["rows"]["original"].items():
        xs = [many["per_seed"][s]["rows"]["original"][key] for s in ("3", "5")]
        assert value == pytest.approx(statistics.fmean(xs), abs=1e-12)
        assert many["spread"]["original"][key] == pytest.approx(statistics.stdev(xs), abs=1e-12)
    assert "±" in many["table"] and "±" not in one["table"]


def test_mean_spread_is_the_mean_and_sample_deviation_and_one_seed_is_returned_as_is():
    mean, spread = mean_spread([{"a": 0.25, "b": 1.0}, {"a": 0.75, "b": 1.0}, {"a": 0.5, "b": float("nan")}])
    assert mean["a"] == 0.5 and spread["a"] == pytest.approx(0.25)
    assert mean["b"] != mean["b"]  # nan in, nan out
    one = {"a": 0.1 + 0.2}
    assert mean_spread([one]) == (one, {"a": 0.0})


def test_the_summary_has_one_line_per_colour_with_direct_paraphrase_preservation_and_fid():
    def colour(direct, fid):
        rows = {"original": {"direct": 1.0, "paraphrase": 1.0, "preservation": 0.99, "fid_gen": 0.0}}
        rows["TRCE(T)"] = {"direct": direct, "paraphrase": 0.0, "preservation": 0.96, "fid_gen": fid}
        return {"rows": rows}

    lines = format_summary({"red": colour(0.0, 3.4), "blue": colour(0.52, 5.75)}).splitlines()
    assert lines[1].split() == ["erase", "original", "TRCE(T)"]
    assert lines[3].split() == ["red", "100/100/99", "0/0/96,", "3.4"]
    assert lines[4].split() == ["blue", "100/100/99", "52/0/96,", "5.8"]


def test_target_all_lists_every_erasable_colour_and_bad_targets_or_seeds_are_one_sentence_errors(tmp_path, capsys):
    assert ToyDemoConfig(target="all").targets == list(ERASABLE) and len(ERASABLE) == 7
    assert ToyDemoConfig(target=["blue", "red"]).targets == ["blue", "red"]
    assert ToyDemoConfig(target="red").model_dump()["target"] == "red"
    for args, message in [
        (["--target", "red,gray"], "target must be one of"),
        (["--target", "red,red"], "names a colour twice"),
        (["--seeds", "1", "1"], "seeds must be a non-empty list of distinct integers"),
    ]:
        assert main(["toy", "demo", "--output", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_generating_from_the_prompts_text_encoder_outputs_gives_the_same_images():
    """bench/toy_colours_stage1.py draws from edited text-encoder outputs; unedited, they are the prompts' images."""
    import torch

    from trce_ray.models import adapter_for
    from trce_ray.toy.assets import load_toy_pipeline
    from trce_ray.toy.bench import generate, prompt_sets

    pipe = load_toy_pipeline()
    rows = prompt_sets("blue", 2, 1, 0)["direct"] + prompt_sets("green", 0, 1, 0)["paraphrase"]
    embeds = adapter_for(pipe).encode_text([r.prompt for r in rows]).hidden
    by_prompt = generate(pipe, rows, steps=2, batch_size=2)
    assert torch.equal(generate(pipe, rows, steps=2, batch_size=2, embeds=embeds), by_prompt)
    assert not torch.equal(generate(pipe, rows, steps=2, batch_size=2, embeds=embeds.flip(0)), by_prompt)
