"""What stage 2 trains and how its loss moves, per trial of a finished stage-2 sweep on the toy world (issue 15):

    PYTHONPATH=. python bench/toy_stage2_cost.py runs/sweep-colours-stage2 [--hinge]

Prints the size of the parameter set stage 2 trains on the toy UNet (`train.params`, `train.blocks` of the sweep's
config) against the whole UNet, then one row per trial: L_erase and L_preserve (the latter also
times lambda, its share of the total) averaged over the first, middle and last tenth of the steps, the fraction of
steps whose L_erase is above 0 (the hinge still pulls), and the trial's toy metrics from sweep.csv.

`--hinge` also reads the sweep's trajectory cache and evaluates L_erase's triplet hinge (Eq. 8, `train.beta` and
`train.margin`; also at beta 1, without guidance enhancement) on every cached malicious record for three stand-in
predictions, with no model run: the original model's conditional prediction (where stage 2 starts without stage 1),
the safe prompt's (an ideal stage 1: the malicious prompt now predicts what the gray one did) and the unconditional
one (the empty-prompt branch of L_erase). For each: the mean hinge and the share of records where it is above 0.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import yaml

from trce_ray.config import load_config
from trce_ray.stage2.run import training_curve

METRICS = ("toy/direct", "toy/paraphrase", "toy/preservation", "fid_gen/toy-preservation")


def parameter_share(cfg) -> tuple[int, int, int]:
    """(trained tensors, trained parameters, all UNet parameters) of the toy pipeline for `cfg.train`."""
    from trce_ray.models.loading import adapter_for
    from trce_ray.toy.assets import load_toy_pipeline

    adapter = adapter_for(load_toy_pipeline())
    params = dict(adapter.denoiser.named_parameters())
    names = adapter.trainable_parameter_names(cfg.train.params, cfg.train.blocks)
    return len(names), sum(params[n].numel() for n in names), sum(p.numel() for p in params.values())


def hinge_table(cfg, root: Path) -> None:
    """The hinge of Eq. 8 on every cached malicious record for the three stand-in predictions (module docstring)."""
    import torch

    from trce_ray.stage2.cache import load_rows
    from trce_ray.stage2.loss import guided, triplet_hinge

    summary = next(root.glob("trials/*/erase/stage2_summary.json"))  # every trial shares one cache
    cache = Path(json.loads(summary.read_text())["cache"])
    items = {i for s in json.loads((cache / "manifest.json").read_text())["shards"] for i in s["items"]}
    cols = load_rows(cache, "malicious", items).columns
    m = {k: torch.from_numpy(cols[k]).float() for k in ("eps_uncond", "eps_cond", "eps_safe")}
    print(
        f"\n{len(m['eps_cond'])} cached malicious records of {cache.name}, margin {cfg.train.margin}\n\n"
        "| beta | prediction stood in | mean hinge | records with hinge > 0 |\n|---|---|---|---|"
    )
    for beta in sorted({cfg.train.beta, 1.0}, reverse=True):  # 1: f_safe, f_unsafe without guidance enhancement
        f_unsafe = guided(m["eps_uncond"], m["eps_cond"], beta)
        f_safe = guided(m["eps_uncond"], m["eps_safe"], beta)
        for label, pred in (
            ("original model, malicious prompt (eps_cond)", m["eps_cond"]),
            ("ideal stage 1, malicious prompt (eps_safe)", m["eps_safe"]),
            ("empty prompt (eps_uncond)", m["eps_uncond"]),
        ):
            h = triplet_hinge(pred, f_safe, f_unsafe, cfg.train.margin)
            print(f"| {beta:g} | {label} | {float(h.mean()):.4g} | {100 * float((h > 0).float().mean()):.0f} % |")


def windows(values: np.ndarray) -> list[float]:
    """Means of the first, middle and last tenth of a curve."""
    k = max(1, len(values) // 10)
    mid = len(values) // 2
    return [float(values[:k].mean()), float(values[mid - k // 2 : mid - k // 2 + k].mean()), float(values[-k:].mean())]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep", help="a finished `trce-ray sweep --stages text,visual` output folder")
    ap.add_argument("--hinge", action="store_true", help="also the hinge of Eq. 8 on the cached records")
    args = ap.parse_args()
    root = Path(args.sweep)
    cfg = load_config(str(root / "sweep_config.yaml"), {})
    tensors, trained, total = parameter_share(cfg)
    print(
        f"stage 2 trains {tensors} tensors, {trained:,} of the toy UNet's {total:,} parameters "
        f"({100 * trained / total:.1f} %; train.params {cfg.train.params}, blocks {cfg.train.blocks})\n"
    )
    table = root / "sweep.csv"  # absent while the sweep runs: the metrics cells stay empty
    rows = {r["trial"]: r for r in csv.DictReader(table.open())} if table.is_file() else {}
    print(
        "| trial | steps | L_erase first / middle / last tenth | steps with L_erase > 0 | L_preserve first / middle / "
        "last tenth | lambda x L_preserve, last tenth | direct | paraphrase | preservation | FID_gen |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for trial in sorted((root / "trials").iterdir()):
        curve_file = trial / "erase" / "metrics.jsonl"
        if not curve_file.is_file():
            continue
        curve = training_curve(trial / "erase")
        erase = np.array([m["erase"] for m in curve])
        preserve = np.array([m["preserve"] for m in curve])
        lam = yaml.safe_load((trial / "erase" / "config.yaml").read_text())["train"]["lam"]
        row = rows.get(trial.name, {})
        e, p = windows(erase), windows(preserve)
        cells = [
            trial.name,
            str(len(curve)),
            " / ".join(f"{v:.4g}" for v in e),
            f"{100 * float((erase > 0).mean()):.0f} %",
            " / ".join(f"{v:.3g}" for v in p),
            f"{lam * p[2]:.3g}",
            *(f"{float(row[k]):.4g}" if row.get(k) else "" for k in METRICS),
        ]
        print("| " + " | ".join(cells) + " |")
    if args.hinge:
        hinge_table(cfg, root)


if __name__ == "__main__":
    main()
