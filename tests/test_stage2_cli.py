"""The command line: `erase --stages text,visual` runs stage 1, the cache and stage 2 into one loadable folder."""

from __future__ import annotations

import os

import torch

from trce_ray import load_erased
from trce_ray.artifacts import apply_delta, load_delta
from trce_ray.cli import main
from trce_ray.models import adapter_for
from trce_ray.models.tiny import tiny_sd_pipeline
from trce_ray.stage2.run import work_dir

from .test_stage2_units import stage2_config


def test_erase_text_visual_kv_then_cache_and_train_commands(tmp_path, tiny_sd_dir, ray_cluster, capsys):
    cfg = stage2_config(tmp_path, tiny_sd_dir, **{"train.num_workers": 0, "train.params": "kv"})
    config = tmp_path / "config.yaml"
    config.write_text(cfg.to_yaml())
    out = tmp_path / "tv"
    assert main(["erase", "--config", str(config), "--stages", "text,visual", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        "prompts.json",
        "stage1.safetensors",
        "stage1_summary.json",
        "stage2.safetensors",
        "stage2_summary.json",
    ]
    assert not work_dir(out).exists()

    # the kv set (App. E): only cross-attention K/V move, on top of the stage-1 edit, which they also hold
    base = tiny_sd_pipeline(0)
    kv = set(adapter_for(base).trainable_parameter_names("kv"))
    stage1, stage2 = load_delta(out / "stage1.safetensors"), load_delta(out / "stage2.safetensors")
    assert stage2 and set(stage2) <= kv
    apply_delta(base.unet, stage1)
    expected = dict(base.unet.named_parameters())
    for name, p in load_erased(str(out), device="cpu").unet.named_parameters():
        assert torch.equal(p, stage2.get(name, expected[name])), name

    # the output exists: a second run refuses without --overwrite, with one sentence
    assert main(["erase", "--config", str(config), "--stages", "text,visual", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err

    # `cache` finds the same complete cache from the folder's config; `train` starts from the folder's stage 1
    assert main(["cache", "--stage1", str(out)]) == 0
    assert "reused (complete)" in capsys.readouterr().out
    assert main(["train", "--stage1", str(out), "--output", str(tmp_path / "again"), "--lr", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "after 4 steps" in printed and "reused" in printed
    from mlflow import MlflowClient  # the run and its loss curve are in MLflow (conftest points it at a temp db)

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exps = [e.experiment_id for e in client.search_experiments()]
    run = client.search_runs(exps, "tags.`trce.command` = 'train' and attributes.run_name = 'train again'")[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "erase")] == [1, 2, 3, 4]
    assert load_delta(tmp_path / "again" / "stage1.safetensors").keys() == stage1.keys()

    assert main(["erase", "--config", str(config), "--stages", "visual,colour", "--output", str(tmp_path / "x")]) == 2
    assert "--stages" in capsys.readouterr().err
