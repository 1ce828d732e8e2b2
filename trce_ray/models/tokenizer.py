"""CLIP's real BPE tokenizer, built offline from the vendored vocabulary (see tools/build_clip_tokenizer.py)."""

from importlib.resources import files

from transformers import CLIPTokenizer

CLIP_VOCAB_SIZE = 49408
BOS_ID = 49406
EOS_ID = 49407


def clip_tokenizer_dir() -> str:
    return str(files("trce_ray") / "assets" / "clip_tokenizer")


def clip_tokenizer(max_length: int = 77, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """The SD-1.x tokenizer (pad = [EoT]); pass pad_token="!" for SD-2.x's padding."""
    return CLIPTokenizer.from_pretrained(clip_tokenizer_dir(), model_max_length=max_length, pad_token=pad_token)
