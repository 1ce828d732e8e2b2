"""`--pick` rules on hand-made sweep rows, and registering the pick in a sqlite MLflow store (no Ray)."""

import json

import pytest

from trce_ray.config import load_config
from trce_ray.errors import ConfigError, TRCEError
from trce_ray.sweep_pick import Condition, apply_pick, parse_rule, pick

ORIGINAL = {"toy/direct": 1.0, "toy/preservation": 0.9}


def _row(name, direct, preservation, error=""):
    return {"trial": name, "stage1.eta": 0.1, "toy/direct": direct, "toy/preservation": preservation, "error": error}


# Worked by hand against original preservation 0.9: "original - 0.05" is 0.85 (0.8500000000000001 in floats).
ROWS = [
    _row("A", 0.0, 0.70),
    _row("B", 0.0, 0.85),  # exactly 0.05 below the original: accepted (the rule's slack)
    _row("C", 0.125, 0.95),
    {"trial": "D", "stage1.eta": 9.0, "error": "stage 2 stopped: loss is NaN"},
    _row("E", 0.0, 0.80),
    _row("F", 0.0, 0.99, error="evaluation failed"),  # would win, but failed
]


def test_parse_rule_reads_every_documented_form():
    rule = parse_rule("min toy/direct where toy/preservation >= original - 0.05 and fid_gen/coco-3k<30")
    assert (rule.mode, rule.metric) == ("min", "toy/direct") and rule.needs_original
    assert rule.conditions == (
        Condition("toy/preservation", ">=", 0.05, "-"),
        Condition("fid_gen/coco-3k", "<", 30.0),
    )
    tight = parse_rule("max clip_score/coco-3k where asr/adv<=original*0.5 and asr/i2p-sexual==original")
    assert [(c.metric, c.op, c.threshold({"asr/adv": 0.4, "asr/i2p-sexual": 0.2})) for c in tight.conditions] == [
        ("asr/adv", "<=", 0.2),
        ("asr/i2p-sexual", "==", 0.2),
    ]
    assert parse_rule("max toy/preservation where toy/direct <= original-0.5").conditions[0].threshold(ORIGINAL) == 0.5
    assert not parse_rule("  max toy/preservation ").needs_original


@pytest.mark.parametrize(
    "text,message",
    [
        ("lowest toy/direct", "must look like 'min|max METRIC"),
        ("min", "must look like 'min|max METRIC"),
        ("min toy/direct where", "must look like 'min|max METRIC"),
        ("min toy/direct where toy/preservation", "must look like METRIC OP VALUE"),
        ("min toy/direct where toy/preservation >= __import__('os')", "must be a number or original"),
        ("min toy/direct where toy/preservation >= original ** 2", "must be a number or original"),
        ("min toy/direct where toy/preservation => 0.5", "must look like METRIC OP VALUE, OP one of >= <= > < =="),
    ],
)
def test_malformed_rules_are_one_sentence(text, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_rule(text)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=message):  # sweep.pick is checked when the config loads
        load_config(None, {"model.path": "toy", "sweep.pick": text})


def test_pick_follows_the_rule_by_hand():
    rule = "min toy/direct where toy/preservation >= original - 0.05"
    picked = pick(ROWS, rule, ORIGINAL)
    assert (picked.trial, picked.value) == ("B", 0.0)  # A and E miss the bar, C erases less, F failed
    assert picked.thresholds == {"toy/preservation >=": pytest.approx(0.85)} and picked.ties == []
    assert pick(ROWS, "max toy/preservation").trial == "C"
    assert pick(ROWS, "max toy/preservation where toy/direct < 0.1").trial == "B"
    assert pick(ROWS, "min toy/direct where toy/preservation == 0.8").trial == "E"
    # A, B and E tie on toy/direct; the toy report's preservation (higher is better) breaks it, as sweep.rank does
    assert pick(ROWS, "min toy/direct").trial == "B"
    twins = ROWS + [_row("G", 0.0, 0.85)]
    assert pick(twins, "min toy/direct").ties == ["B", "G"]
    assert pick(ROWS, "min toy/direct where toy/preservation > original - 0.05", ORIGINAL).trial == "C"


@pytest.mark.parametrize(
    "rule,original,message",
    [
        ("min toy/directt", None, "names toy/directt, which no trial measured \\(they have stage1.eta, toy/direct,"),
        ("min toy/direct where toy/agreement > 0", None, "names toy/agreement, which no trial measured"),
        (
            "min toy/direct where toy/preservation > 0.99",
            None,
            r"no trial meets the pick rule .* \(4 finished trials; toy/preservation > 0.99 holds for 0\)$",
        ),
        ("min toy/direct where toy/preservation >= original", {"toy/direct": 1.0}, "the original model's, which"),
        ("min toy/direct where toy/preservation >= original", None, "the original model's, which"),
    ],
)
def test_pick_errors_are_one_sentence(rule, original, message):
    with pytest.raises(TRCEError, match=message) as err:
        pick(ROWS, rule, original)
    assert "\n" not in str(err.value)


def test_no_match_says_how_many_trials_each_condition_admits():
    with pytest.raises(TRCEError) as err:
        pick(ROWS, "min toy/direct where toy/preservation >= original and toy/direct <= 0", ORIGINAL)
    assert "toy/preservation >= 0.9 holds for 1; toy/direct <= 0 holds for 3)" in str(err.value)


def _erase_folder(folder, cfg):
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(cfg.to_yaml())
    save_file({"w": torch.arange(6, dtype=torch.float32)}, str(folder / "stage1.safetensors"))
    (folder / "stage1_summary.json").write_text("{}")


def test_pick_registers_the_trials_erase_folder_and_tags_the_sweep(tmp_path, monkeypatch):
    """A sweep's MLflow runs made by hand (the sweep's run and one child run per trial, as trials log them), then
    apply_pick: sweep.json gets `picked`, the sweep's run the tags, the model registry a version whose files are
    the picked trial's erase folder, logged to that trial's own run."""
    import mlflow

    from trce_ray.sweep_tracking import trial_run
    from trce_ray.tracking import track

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = {"model.path": "toy", "stage1.concept": "toy-red", "tracking.uri": uri, "sweep.grid": {"stage1.eta": [1]}}
    rule = "min toy/direct where toy/preservation >= original - 0.05"
    cfg = load_config(None, {**base, "sweep.pick": rule, "sweep.register_as": "toy-red-erased"})
    out = tmp_path / "sweep"
    with track(cfg, "sweep", run_name="sweep sweep") as parent:
        for i, row in enumerate(ROWS):
            with trial_run(cfg, row["trial"], out.name, parent.run_id):
                pass
            trial_cfg = load_config(None, {**base, "stage1.eta": 0.1 * (i + 1)})  # B: 0.2
            _erase_folder(out / "trials" / row["trial"] / "erase", trial_cfg)
    (out / "original").mkdir()
    (out / "original" / "metrics.json").write_text(json.dumps(ORIGINAL))  # as `original_metrics` writes it
    (out / "sweep.json").write_text(json.dumps({"rows": ROWS, "mlflow_run_id": parent.run_id}))

    entry = apply_pick(cfg, out, ROWS, parent.run_id, progress=False)
    assert entry["trial"] == "B" and entry["rule"] == rule and entry["registered"]["version"] == "1"
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["picked"] == entry and summary["original"] == ORIGINAL
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    tags = client.get_run(parent.run_id).data.tags
    assert (tags["trce.picked"], tags["trce.pick_rule"], tags["trce.registered"]) == ("B", rule, "toy-red-erased/1")
    assert client.get_run(parent.run_id).data.metrics["original/toy/preservation"] == 0.9
    version = client.get_model_version("toy-red-erased", "1")
    trial_run_id = entry["registered"]["run_id"]
    assert version.run_id == trial_run_id and client.get_run(trial_run_id).info.run_name == "B"
    assert version.tags["trce.pick_rule"] == rule and version.tags["trce.eta"] == "0.2"  # B's own config
    local = mlflow.artifacts.download_artifacts(f"{version.source}/stage1.safetensors", dst_path=str(tmp_path / "dl"))
    assert open(local, "rb").read() == (out / "trials" / "B" / "erase" / "stage1.safetensors").read_bytes()

    # a second pick registers a second version; a rule no trial meets leaves sweep.json's pick as it was
    again = load_config(None, {**base, "sweep.pick": "max toy/preservation", "sweep.register_as": "toy-red-erased"})
    assert apply_pick(again, out, ROWS, parent.run_id, progress=False)["registered"]["version"] == "2"
    strict = load_config(None, {**base, "sweep.pick": "max toy/preservation where toy/direct < 0"})
    with pytest.raises(TRCEError, match="no trial meets .*; the sweep.s results are in .*sweep.csv$"):
        apply_pick(strict, out, ROWS, parent.run_id, progress=False)
    assert json.loads((out / "sweep.json").read_text())["picked"]["trial"] == "C"
    assert client.get_run(parent.run_id).data.tags["trce.picked"] == "C"
