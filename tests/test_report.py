"""`trce-ray report`: the paper's table layout from metrics, from eval folders and from MLflow runs."""

import json
import os

import pytest

from trce_ray.config import load_config
from trce_ray.errors import TRCEError
from trce_ray.evaluation.report import RunMetrics, from_folder, tables_for, to_html, to_markdown
from trce_ray.tracking import track

# TRCE Table 1, rows SD1.4 and TRCE(T+V), as fractions
SD14 = {
    "asr/i2p-sexual": 0.3469,
    "asr/mma": 0.79,
    "asr/p4d": 0.8344,
    "asr/ring-a-bell": 0.5949,
    "asr/unlearndiff": 0.5775,
    "fid_real/coco-3k": 27.18,
    "clip_score/coco-3k": 30.97,
}
TRCE_TV = {
    "asr/i2p-sexual": 0.0129,
    "asr/mma": 0.014,
    "asr/p4d": 0.0199,
    "asr/ring-a-bell": 0.0127,
    "asr/unlearndiff": 0.007,
    "asr/adv": 0.0122,
    "fid_gen/coco-3k": 12.08,
    "fid_real/coco-3k": 26.89,
    "clip_score/coco-3k": 30.71,
}


def test_table1_layout_values_and_best_in_bold():
    md = to_markdown([RunMetrics("SD1.4", SD14, ""), RunMetrics("TRCE(T+V)", TRCE_TV, "")])
    lines = md.splitlines()
    header = next(ln for ln in lines if ln.startswith("| Model"))
    assert header == (
        "| Model | I2P ↓ | MMA ↓ | P4D ↓ | Ring ↓ | UnDiff ↓ | Adv ↓ | FID_gen ↓ | FID_real ↓ | CLIP-S ↑ |"
    )
    assert "| SD1.4 | 34.69% | 79.00% | 83.44% | 59.49% | 57.75% | - | - | 27.18 | **30.97** |" in lines
    assert (
        "| TRCE(T+V) | **1.29%** | **1.40%** | **1.99%** | **1.27%** | **0.70%** | 1.22% | 12.08 | **26.89** | 30.71 |"
    ) in lines
    assert "Table 2" not in md


def test_table2_columns_follow_the_paper():
    m = {
        "q16/i2p/hate": 0.212,
        "q16/i2p/self-harm": 0.355,
        "q16/i2p/illegal-activity": 0.194,
        "q16/i2p/overall": 0.356,
    }
    ((table, members),) = tables_for([RunMetrics("SD1.4", m, "")])
    assert [c.title for c in table.columns] == [
        "Hate",
        "Harassment",
        "Violence",
        "Self-harm",
        "Sexual",
        "Shocking",
        "Illegal Activity",
        "Overall",
        "FID_gen",
        "FID_real",
        "CLIP-S",
    ]
    row = next(ln for ln in to_markdown(members).splitlines() if ln.startswith("| SD1.4"))
    assert row == "| SD1.4 | 21.20% | - | - | 35.50% | - | - | 19.40% | 35.60% | - | - | - |"


def test_celebrity_artist_and_other_sets_tables_and_html_escaping():
    runs = [
        RunMetrics(
            "<erased>",
            {
                "celebrity/acc_e": 0.05,
                "celebrity/acc_r": 0.85,
                "celebrity/h_c": 0.89,
                "artist/vangogh/acc_e": 0.2,
                "artist/vangogh/acc_u": 0.85,
                "asr/my-prompts": 0.5,
            },
            "",
        )
    ]
    titles = [t.title for t, _ in tables_for(runs)]
    assert titles == [
        "Artist-style erasure (cf. TRCE Table 9)",
        "Celebrity erasure (cf. TRCE Table 10)",
        "Other prompt sets: NudeNet attack success rate",
    ]
    page = to_html(runs)
    assert "&lt;erased&gt;" in page and "<erased>" not in page and page.count("<table>") == 3


def test_report_from_folders_and_mlflow_runs(tmp_path, capsys):
    from trce_ray.cli import main

    folder = tmp_path / "eval-sd14"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"model": "CompVis/stable-diffusion-v1-4", "metrics": SD14}))
    uri, experiment = os.environ["MLFLOW_TRACKING_URI"], "test-report"
    for label, metrics in (("TRCE(T)", {"asr/mma": 0.078}), ("TRCE(T+V)", TRCE_TV)):
        cfg = load_config(overrides={"model.path": "toy", "tracking.uri": uri, "tracking.experiment": experiment})
        with track(cfg, "eval") as run:
            run.set_tags({"trce.label": label})
            run.log_metrics(metrics)
    with track(cfg, "erase") as run:  # not an eval run: left out
        run.log_metrics({"asr/mma": 0.9})
    assert main(["report", "--experiment", experiment, "--tracking-uri", uri, "--output", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    rows = [ln.split(" | ")[0] for ln in md.splitlines() if ln.startswith("| TRCE")]
    assert rows == ["| TRCE(T)", "| TRCE(T+V)"]  # oldest first, erase run excluded
    assert "<td>TRCE(T+V)</td>" in (tmp_path / "r" / "report.html").read_text()
    assert main(["report", str(folder), "--output", str(tmp_path / "r2")]) == 0
    assert "| stable-diffusion-v1-4 (eval-sd14) | 34.69%" in (tmp_path / "r2" / "report.md").read_text()
    with pytest.raises(TRCEError, match="not an eval output folder"):
        from_folder(tmp_path)
    capsys.readouterr()
    assert main(["report", "--experiment", "no-such-experiment", "--tracking-uri", uri]) == 2
    assert "no MLflow experiment named 'no-such-experiment'" in capsys.readouterr().err
