"""Ray job entry points and shipped configs: configs validate, the job script runs the CLI, manifests name files."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trce_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs").glob("sd14-*.yaml")), ids=lambda p: p.name)
def test_paper_configs_validate(path):
    cfg = load_config(path)
    assert cfg.model.path == "CompVis/stable-diffusion-v1-4" and cfg.stage1.tokens == ["eot"]
    # eta as in the authors' code, which made the paper's tables: 0.01, 0.02 in their multi-concept config
    assert cfg.stage1.convention == "authors" and cfg.stage1.eta == (0.02 if "i2p" in path.name else 0.01)


@pytest.mark.slow
def test_erase_job_script_runs_the_cli(tiny_sd_dir, tmp_path):
    out = tmp_path / "job-out"
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "erase.py"),
        "--model",
        str(tiny_sd_dir),
        "--concept",
        "van-gogh",
        "--templates",
        "2",
        "--synonyms",
        "2",
        "--set",
        "stage1.preserve_count=30",
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "stage1.safetensors").is_file()
    bad = subprocess.run(cmd[:-1] + [str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "already exists" in bad.stderr


def test_cluster_manifests_reference_existing_files():
    docs = {p.name: list(yaml.safe_load_all(p.read_text())) for p in (ROOT / "cluster").glob("*.yaml")}
    assert docs["raycluster.yaml"][0]["kind"] == "RayCluster"
    rayjob = docs["rayjob-sexual.yaml"][0]
    assert rayjob["kind"] == "RayJob"
    for rel in re.findall(r"/home/ray/trce-ray/(\S+)", rayjob["spec"]["entrypoint"]):
        assert (ROOT / rel).exists(), rel
