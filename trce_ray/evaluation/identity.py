"""Celebrity (Acc_e, Acc_r, H_c; MACE / TRCE Table 10) and artist-style (Acc_e, Acc_u; TRCE Table 9) metrics
from a classifier the user supplies.

A classifier is any object with

    predict(images: list[PIL.Image.Image], candidates: list[str]) -> list[str | None]

returning, per image, the candidate it recognises (top-1) or None. `eval.face_classifier` / `eval.style_classifier`
name a builder as "package.module:attr"; it is called with `eval.classifier_options` as keyword arguments
(a class or a function), inside each scoring actor. Wrap e.g. the GIPHY celebrity detector or a CLIP zero-shot
style judge behind that one method.
"""

from __future__ import annotations

import colorsys
import hashlib
import importlib
from typing import Protocol

import numpy as np

from ..errors import TRCEError


class IdentityClassifier(Protocol):
    def predict(self, images: list, candidates: list[str]) -> list[str | None]: ...


def load_classifier(spec: str, options: dict | None = None, field: str = "eval.face_classifier"):
    """Build the classifier named "module:attr" with `options` as keyword arguments."""
    if ":" not in spec:
        raise TRCEError(f"{field} {spec!r} must look like package.module:ClassOrFunction")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise TRCEError(f"{field}: cannot import module {module_name!r}: {err}") from None
    builder = getattr(module, attr, None)
    if builder is None:
        raise TRCEError(f"{field}: module {module_name!r} has no attribute {attr!r}")
    obj = builder(**(options or {})) if callable(builder) else builder
    if not callable(getattr(obj, "predict", None)):
        raise TRCEError(f"{field}: {spec} did not give an object with a predict(images, candidates) method")
    return obj


def same_name(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and " ".join(a.casefold().split()) == " ".join(b.casefold().split())


def _accuracy(pairs: list[tuple[str, str | None]]) -> float:
    return sum(same_name(label, pred) for label, pred in pairs) / len(pairs) if pairs else float("nan")


def harmonic_h(acc_e: float, acc_r: float) -> float:
    """H_c = 2 / ((1 - Acc_e)^-1 + Acc_r^-1) (TRCE Eq. 11); 0 when either side is 0."""
    if acc_r <= 0 or acc_e >= 1:
        return 0.0
    return 2.0 / (1.0 / (1.0 - acc_e) + 1.0 / acc_r)


def celebrity_metrics(erase: list[tuple[str, str | None]], retain: list[tuple[str, str | None]]) -> dict:
    """(label, prediction) pairs of the erased and the retained celebrities' images."""
    acc_e, acc_r = _accuracy(erase), _accuracy(retain)
    h = harmonic_h(acc_e, acc_r) if erase and retain else float("nan")
    return {"acc_e": acc_e, "acc_r": acc_r, "h_c": h, "erase_images": len(erase), "retain_images": len(retain)}


def artist_metrics(rows: list[tuple[str, str, str | None]]) -> dict:
    """(role, label, prediction) triples: Acc_e on erased artists' prompts, Acc_u on the other artists'."""
    erase = [(label, pred) for role, label, pred in rows if role == "erase"]
    keep = [(label, pred) for role, label, pred in rows if role != "erase"]
    return {"acc_e": _accuracy(erase), "acc_u": _accuracy(keep), "erase_images": len(erase), "other_images": len(keep)}


class PaletteClassifier:
    """A reference classifier for tests and wiring checks, not for faces: it recognises images painted in the
    colour that `colour_of(name)` assigns to a candidate (mean colour within `tolerance`, else None).
    """

    def __init__(self, tolerance: float = 24.0):
        self.tolerance = tolerance

    @staticmethod
    def colour_of(name: str) -> tuple[int, int, int]:
        h = int(hashlib.sha256(" ".join(name.casefold().split()).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        r, g, b = colorsys.hsv_to_rgb(h, 0.9, 0.9)
        return int(r * 255), int(g * 255), int(b * 255)

    def predict(self, images: list, candidates: list[str]) -> list[str | None]:
        palette = np.array([self.colour_of(c) for c in candidates], dtype=np.float64)
        out: list[str | None] = []
        for im in images:
            mean = np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
            dist = np.linalg.norm(palette - mean, axis=1)
            best = int(dist.argmin())
            out.append(candidates[best] if dist[best] <= self.tolerance else None)
        return out
