"""Which model to erase from, and how to load it."""

from __future__ import annotations

from typing import Literal

from .base import Section


class ModelConfig(Section):
    path: str  # diffusers folder, hub id (org/name), or "toy" for the built-in toy model
    allow_pickle: bool = False  # accept .bin/.ckpt weights (pickle can run code: only for trusted sources)
    dtype: Literal["float32", "float16", "bfloat16"] = (
        "float32"  # weights dtype for loading; stage 1 solves in float64
    )
    device: str = "auto"  # "auto" picks cuda when available
    check_base: bool = True  # refuse artifacts whose base_fingerprint is not this model's (other weights)
