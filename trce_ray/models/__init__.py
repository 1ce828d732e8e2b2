"""Model families behind one adapter interface, pipeline loading, and tiny builders for tests."""

from .base import Conditioning, DiffusionAdapter, TextEmbeddings
from .loading import adapter_for, load_pipeline
from .tokenizer import clip_tokenizer

__all__ = ["Conditioning", "DiffusionAdapter", "TextEmbeddings", "adapter_for", "clip_tokenizer", "load_pipeline"]
