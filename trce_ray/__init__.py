"""trce-ray: TRCE concept erasure for text-to-image diffusion models, at cluster scale on Ray."""

__version__ = "0.1.0"
