"""Where the shipped toy-world weights live inside the package."""

from importlib.resources import files
from pathlib import Path

from ..errors import TRCEError


def toy_pipeline_dir() -> Path:
    path = Path(str(files("trce_ray") / "toy" / "weights" / "pipeline"))
    if not (path / "model_index.json").exists():
        raise TRCEError("the toy model is not in this install yet; train it with `trce-ray toy train`")
    return path
