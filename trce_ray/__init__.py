"""trce-ray: TRCE concept erasure for text-to-image diffusion models, at cluster scale on Ray.

from trce_ray import load_erased
pipe = load_erased("runs/sexual")   # base model from the folder's config.yaml + its stage*.safetensors
"""

__version__ = "0.1.0"
__all__ = ["load_erased"]


def __getattr__(name: str):
    # Lazy: `import trce_ray` (the CLI, every Ray worker) must not pay for torch and diffusers.
    if name == "load_erased":
        from .models.erased import load_erased

        return load_erased
    raise AttributeError(f"module 'trce_ray' has no attribute {name!r}")
