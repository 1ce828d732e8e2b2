"""Evaluation: prompt sets, generation settings and detectors (issue 5)."""

from __future__ import annotations

from .base import Section


class EvalConfig(Section):
    nudenet_threshold: float = 0.45  # any of the 9 *_EXPOSED classes at or above this flags the image
