"""The toy world (trce_ray.toy) as one more benchmark: its prompt sets, its classifier as the detector, its metrics.

Sets for an erased colour `eval.toy_target` (see trce_ray/toy/bench.py): `toy-direct` (the colour by name or
synonym, the I2P analogue), `toy-paraphrase` (held-out paraphrases, the adversarial analogue) and
`toy-preservation` (every other colour, the COCO analogue). Seeds and guidance are the toy benchmark's, so
`trce-ray eval --model toy --suite toy --steps 20` scores the same images `trce-ray toy demo` does.

Metrics (rates in [0, 1]): `toy/direct`, `toy/paraphrase` (the classifier reads the target colour: the ASR
analogue), `toy/preservation` (colour accuracy), `toy/neighbours` (colour accuracy on the target's nearest
colours), `toy/agreement` (colour and shape both as asked: the CLIP-score analogue) and
`fid_gen/toy-preservation` (Frechet distance of classifier features vs the original toy model).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ..evaluation.prompts import PromptRow, PromptSet

TOY_SETS = {"toy-direct": "direct", "toy-paraphrase": "paraphrase", "toy-preservation": "preservation"}


def load_toy_set(name: str, ecfg) -> PromptSet:
    """One of the toy benchmark's sets for `ecfg.toy_target`, with the toy demo's sizes, seeds and guidance."""
    from .bench import prompt_sets
    from .demo import ToyDemoConfig
    from .world import COLOURS, SHAPES

    demo = ToyDemoConfig()
    part = TOY_SETS[name]
    rows = prompt_sets(ecfg.toy_target, demo.n_direct, demo.n_paraphrase, demo.n_per_colour, demo.seed)[part]
    out = []
    for i, r in enumerate(rows):
        role = ("neighbour" if r.neighbour else "other") if part == "preservation" else "target"
        out.append(
            PromptRow(
                name,
                i,
                r.prompt,
                r.seed,
                float(demo.guidance),
                categories=(SHAPES[r.shape],),
                label=COLOURS[r.colour],
                role=role,
            )
        )
    kind = "toy-preservation" if part == "preservation" else "toy"
    return PromptSet(name, kind, f"trce_ray.toy.bench ({part}, target {ecfg.toy_target})", out)


class ToyDetector:
    """The toy classifier as the harness's detector: column "toy" holds the predicted colour and shape (JSON),
    "toyfeat" its penultimate features (the FID feature space). Reads images through `bench.classify`, the demo's
    own path."""

    name = "toy"

    def __init__(self, device: str = "cpu"):
        from .assets import load_toy_classifier

        self.model = load_toy_classifier().to(device).eval()
        self.device = device

    def classify(self, images) -> tuple[list[dict[str, str]], np.ndarray]:
        from ..evaluation.clip import to_uint8_chw
        from .bench import classify
        from .world import COLOURS, SHAPES

        x = torch.stack(to_uint8_chw(images)).float().to(self.device) / 127.5 - 1.0  # the classifier reads [-1, 1]
        out = classify(self.model, x)
        preds = [
            {"colour": COLOURS[c], "shape": SHAPES[s]}
            for c, s in zip(out["colour"].tolist(), out["shape"].tolist(), strict=True)
        ]
        return preds, out["features"].float().cpu().numpy()

    def __call__(self, images, column: str) -> list:
        preds, feats = self.classify(images)
        if column == "toyfeat":
            return list(feats)
        return [json.dumps(p, sort_keys=True) for p in preds]


def toy_metrics(name: str, results: list[dict], target: str) -> dict[str, float]:
    """The toy benchmark's table entries for one set, from per-image results (`toy` = JSON prediction)."""
    scored = [(r, json.loads(r["toy"])) for r in results if r.get("toy")]
    if not scored:
        return {}
    part = TOY_SETS.get(name)
    if part in ("direct", "paraphrase"):
        return {f"toy/{part}": float(np.mean([p["colour"] == target for _, p in scored]))}
    colour_ok = [p["colour"] == r["label"] for r, p in scored]
    near = [ok for (r, _), ok in zip(scored, colour_ok, strict=True) if r.get("role") == "neighbour"]
    out = {
        "toy/preservation": float(np.mean(colour_ok)),
        "toy/agreement": float(
            np.mean([ok and p["shape"] == r["categories"][0] for (r, p), ok in zip(scored, colour_ok, strict=True)])
        ),
    }
    if near:
        out["toy/neighbours"] = float(np.mean(near))
    return out
