"""A small CNN that reads an image's colour and shape: the toy world's NudeNet / Q16 / CLIP in one.

Its penultimate features stand in for Inception features in the Frechet distance (the FID_gen analogue).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..artifacts import atomic_file
from ..errors import TRCEError
from .world import COLOURS, SHAPES

FORMAT = "trce-ray-toy-classifier"


class ToyClassifier(nn.Module):
    """Three conv stages (32 -> 16 -> 8 -> global max pool), a `feature_dim` penultimate layer, two heads.

    Max pooling reads shape at any position and size; with GroupNorm/average pooling shape accuracy was still 85%
    after 600 steps, with BatchNorm/max pooling 100% after 300 (measured on 1000 fresh renders).
    """

    def __init__(self, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.width, self.feature_dim = width, feature_dim

        def stage(cin, cout):
            return [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        w = width
        self.body = nn.Sequential(
            *stage(3, w),
            nn.MaxPool2d(2),
            *stage(w, 2 * w),
            nn.MaxPool2d(2),
            *stage(2 * w, 4 * w),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, feature_dim),
            nn.ReLU(),
        )
        self.colour_head = nn.Linear(feature_dim, len(COLOURS))
        self.shape_head = nn.Linear(feature_dim, len(SHAPES))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images in [-1, 1], [B, 3, H, W] -> [B, feature_dim]."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(images)
        return self.colour_head(f), self.shape_head(f)


def save_classifier(model: ToyClassifier, path: str | Path) -> None:
    meta = {
        "format": FORMAT,
        "width": str(model.width),
        "feature_dim": str(model.feature_dim),
        "colours": json.dumps(list(COLOURS)),
        "shapes": json.dumps(list(SHAPES)),
    }
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)


def load_classifier(path: str | Path) -> ToyClassifier:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TRCEError(f"toy classifier file {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise TRCEError(f"{path} is not a toy classifier (metadata format {meta.get('format')!r})")
    if json.loads(meta["colours"]) != list(COLOURS) or json.loads(meta["shapes"]) != list(SHAPES):
        raise TRCEError(f"toy classifier {path} was trained on another attribute list than this version's world")
    model = ToyClassifier(int(meta["width"]), int(meta["feature_dim"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return model.eval()
