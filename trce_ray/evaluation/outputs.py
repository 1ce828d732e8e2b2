"""What an evaluation leaves behind: the image index, per-prompt CSVs, grids, metrics.json, report.md, the
MLflow run's metrics and artifacts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..artifacts import atomic_file, write_json
from ..tracking import Tracker
from .images import image_grid, open_rgb
from .nudity import class_scores, exposed_hits


def write_index(image_root: Path, set_name: str, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ["set", "row", "k", "prompt", "seed", "guidance", "relpath"]
    table = pa.table({c: [r[c] for r in rows] for c in cols})
    folder = image_root / set_name
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "index.parquet") as tmp:
        pq.write_table(table, tmp)


def write_results_csv(path: Path, results: list[dict], ecfg) -> None:
    cols = [
        "set",
        "row",
        "k",
        "prompt",
        "seed",
        "guidance",
        "image",
        "categories",
        "label",
        "role",
        "nudenet_flagged",
        "nudenet_exposed",
        "nudenet_scores",
        "q16_p",
        "q16_flagged",
        "clip_score",
        "prediction",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in results:
            scores = class_scores(r.get("nudenet")) if r.get("nudenet") not in (None, "") else None
            hits = exposed_hits(scores, ecfg.nudenet_threshold) if scores is not None else []
            q = r.get("q16")
            w.writerow(
                {
                    "set": r["set"],
                    "row": r["row"],
                    "k": r["k"],
                    "prompt": r["prompt"],
                    "seed": r["seed"],
                    "guidance": r["guidance"],
                    "image": r["image"],
                    "categories": ",".join(r["categories"] or ()),
                    "label": r["label"] or "",
                    "role": r["role"] or "",
                    "nudenet_flagged": "" if scores is None else int(bool(hits)),
                    "nudenet_exposed": ",".join(hits),
                    "nudenet_scores": ""
                    if scores is None
                    else json.dumps({k: round(v, 4) for k, v in scores.items()}),
                    "q16_p": "" if q is None else f"{q:.4f}",
                    "q16_flagged": "" if q is None else int(q >= ecfg.q16_threshold),
                    "clip_score": "" if r.get("clip") is None else f"{r['clip']:.4f}",
                    "prediction": r.get("face") or r.get("style") or "",
                }
            )


def is_flagged(result: dict, ecfg) -> bool:
    n = result.get("nudenet")
    q = result.get("q16")
    return bool(
        (n not in (None, "") and exposed_hits(class_scores(n), ecfg.nudenet_threshold))
        or (q is not None and q >= ecfg.q16_threshold)
    )


def write_grid(path: Path, results: list[dict], ecfg) -> None:
    chosen = sorted(results, key=lambda r: (r["row"], r["k"]))[: ecfg.grid_images]
    if not chosen:
        return
    grid = image_grid(
        [open_rgb(r["image"]) for r in chosen], [is_flagged(r, ecfg) for r in chosen], blur=ecfg.blur_flagged
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        grid.save(tmp, format="PNG")


def write_outputs(out, psets, results_by_set, metrics, sets_info, notices, ecfg, cfg, key, generated, elapsed):
    """Everything but the images: per-set CSVs and grids, skipped.csv, config.yaml, metrics.json, report.md."""
    from .report import single_run_markdown

    out.mkdir(parents=True, exist_ok=True)
    for ps in psets:
        write_results_csv(out / "results" / f"{ps.name}.csv", results_by_set[ps.name], ecfg)
        write_grid(out / "grids" / f"{ps.name}.png", results_by_set[ps.name], ecfg)
    with atomic_file(out / "skipped.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "row", "reason", "text"])
        for ps in psets:
            for s in ps.skipped:
                w.writerow([s.set, s.row, s.reason, s.text])
    with atomic_file(out / "config.yaml") as tmp:
        tmp.write_text(cfg.to_yaml())
    write_json(
        out / "metrics.json",
        {
            "model": cfg.model.path,
            "deltas": list(ecfg.deltas),
            "generation_key": key,
            "metrics": metrics,
            "sets": sets_info,
            "notices": notices,
            "generated_images": generated,
            "seconds": round(elapsed, 2),
        },
    )
    label = label_for(cfg)
    with atomic_file(out / "report.md") as tmp:
        tmp.write_text(single_run_markdown(label, metrics, sets_info, notices))


def label_for(cfg) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    name = Path(cfg.model.path).name or cfg.model.path
    return name + ("+" + "+".join(Path(d).stem for d in cfg.eval.deltas) if cfg.eval.deltas else "")


def log_to_tracker(tracker: Tracker, out: Path, metrics: dict, cfg, key: str, identity: dict) -> None:
    if not tracker.active:
        return
    # The identity (base model + sha256 of every applied artifact) ties this run to the erase run's logged deltas.
    tracker.set_tags(
        {
            "trce.label": label_for(cfg),
            "trce.model": cfg.model.path,
            "trce.suite": cfg.eval.suite or "",
            "trce.generation_key": key,
            "trce.model_identity": json.dumps(identity),
        }
    )
    tracker.log_metrics(metrics)
    for name in ("metrics.json", "report.md", "skipped.csv", "config.yaml"):
        tracker.log_artifact(out / name)
    tracker.log_artifacts(out / "results", "results")
    if (out / "grids").is_dir():
        tracker.log_artifacts(out / "grids", "grids")
