"""Where the shipped toy-world weights live inside the package, and loaders for them.

`trce_ray/toy/weights/` holds `pipeline/` (diffusers layout, float16 safetensors), `classifier.safetensors`,
`train_config.yaml` (the recipe: `trce-ray toy train --config` it to reproduce the weights) and `train_log.json`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ..errors import TRCEError


def toy_weights_dir() -> Path:
    return Path(str(files("trce_ray") / "toy" / "weights"))


def toy_pipeline_dir() -> Path:
    path = toy_weights_dir() / "pipeline"
    if not (path / "model_index.json").exists():
        raise TRCEError("the toy model is not in this install yet; train it with `trce-ray toy train`")
    return path


def toy_classifier_path() -> Path:
    path = toy_weights_dir() / "classifier.safetensors"
    if not path.is_file():
        raise TRCEError("the toy classifier is not in this install yet; train it with `trce-ray toy train`")
    return path


def load_toy_pipeline(device: str = "cpu"):
    """The shipped toy StableDiffusionPipeline (float32)."""
    from ..models import load_pipeline

    return load_pipeline(str(toy_pipeline_dir()), device=device)


def load_toy_classifier():
    """The shipped attribute classifier, in eval mode on CPU."""
    from .classifier import load_classifier

    return load_classifier(toy_classifier_path())
