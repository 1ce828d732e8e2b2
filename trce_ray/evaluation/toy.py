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

from .prompts import PromptRow, PromptSet

TOY_SETS = {"toy-direct": "direct", "toy-paraphrase": "paraphrase", "toy-preservation": "preservation"}


def load_toy_set(name: str, ecfg) -> PromptSet:
    """One of the toy benchmark's sets for `ecfg.toy_target`, with the toy demo's sizes, seeds and guidance."""
    from ..toy.bench import prompt_sets
    from ..toy.demo import ToyDemoConfig
    from ..toy.world import COLOURS, SHAPES

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
    """The toy classifier: predicted colour and shape, and its penultimate features (the FID feature space)."""

    name = "toy"

    def __init__(self, device: str = "cpu"):
        from ..toy.assets import load_toy_classifier

        self.model = load_toy_classifier().to(device).eval()
        self.device = device

    @torch.no_grad()
    def classify(self, images) -> tuple[list[dict[str, str]], np.ndarray]:
        from ..toy.world import COLOURS, SHAPES
        from .clip import to_uint8_chw

        x = torch.stack(to_uint8_chw(images)).float().to(self.device) / 127.5 - 1.0  # the classifier reads [-1, 1]
        feats = self.model.features(x)
        colour = self.model.colour_head(feats).argmax(-1).tolist()
        shape = self.model.shape_head(feats).argmax(-1).tolist()
        preds = [{"colour": COLOURS[c], "shape": SHAPES[s]} for c, s in zip(colour, shape, strict=True)]
        return preds, feats.float().cpu().numpy()


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
