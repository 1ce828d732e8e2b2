"""Where the shipped toy-world weights live inside the package, and loaders for them.

`trce_ray/toy/weights/` holds `pipeline/` (diffusers layout, float16 safetensors), `classifier.safetensors`,
`train_config.yaml` (the recipe: `trce-ray toy train --config` it to reproduce the weights) and `train_log.json`.
`trce_ray/toy/weights-flux/` holds the FLUX toy the same way (`pipeline/`, recipe, log; it shares the classifier).
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


def flux_toy_pipeline_dir() -> Path:
    path = toy_weights_dir().parent / "weights-flux" / "pipeline"
    if not (path / "model_index.json").exists():
        raise TRCEError(
            "the FLUX toy model is not in this install yet; train it with "
            "`trce-ray toy train --family flux --output trce_ray/toy/weights-flux`"
        )
    return path


def toy_classifier_path() -> Path:
    path = toy_weights_dir() / "classifier.safetensors"
    if not path.is_file():
        raise TRCEError("the toy classifier is not in this install yet; train it with `trce-ray toy train`")
    return path


def load_toy_pipeline(device: str = "cpu", family: str = "sd"):
    """The shipped toy pipeline (float32): the StableDiffusionPipeline, or with family="flux" the FluxPipeline."""
    from ..models import load_pipeline

    return load_pipeline(str(flux_toy_pipeline_dir() if family == "flux" else toy_pipeline_dir()), device=device)


def load_toy_classifier():
    """The shipped attribute classifier, in eval mode on CPU."""
    from .classifier import load_classifier

    return load_classifier(toy_classifier_path())
