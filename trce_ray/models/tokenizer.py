"""Tokenizers built offline: CLIP's real BPE tokenizer from the vendored vocabulary (tools/build_clip_tokenizer.py),
and a T5-style unigram tokenizer derived from it for the tiny SD3/FLUX builders."""

import json
import math
import re
import string
from functools import lru_cache
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


T5_VOCAB_SIZE = 32100  # 32,000 pieces + 100 <extra_id_*>, as T5's published tokenizer


@lru_cache(maxsize=1)
def _t5_pieces() -> tuple[tuple[str, float], ...]:
    """Unigram pieces derived from CLIP's vocabulary: "word</w>" becomes "▁word", inner pieces stay as they are.

    Scores fall with CLIP's merge rank and every piece costs at least 10 nats, so whole words win over spellings.
    Single characters (with and without "▁") guarantee every ASCII prompt tokenizes without <unk>.
    """
    vocab = json.loads((files("trce_ray") / "assets" / "clip_tokenizer" / "vocab.json").read_text())
    plain = re.compile(r"^[a-z0-9]+$")
    pieces, seen = [], set()
    for ch in string.ascii_letters + string.digits + string.punctuation:
        for piece in (ch, "\u2581" + ch):
            seen.add(piece)
            pieces.append(piece)
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        final = token.endswith("</w>")
        body = token[:-4] if final else token
        piece = "\u2581" + body if final else body
        if plain.match(body) and piece not in seen:
            seen.add(piece)
            pieces.append(piece)
    special = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -10.0)]
    n = T5_VOCAB_SIZE - 100 - len(special)
    return tuple(special + [(p, -10.0 - math.log(k + 1)) for k, p in enumerate(pieces[:n])])


def t5_tokenizer(max_length: int = 256):
    """A T5-style tokenizer (SentencePiece unigram, pad 0, </s> 1 appended, 32,100 ids) built offline.

    T5's own sentencepiece model cannot be downloaded here, so the pieces come from CLIP's vocabulary. Token-role
    behaviour matches T5's: no start token, "</s>" after the last piece, multi-piece words ("nudity" -> ▁nu d ity),
    then padding. Used by the tiny SD3 and FLUX builders only; real models bring their own tokenizer.
    """
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=list(_t5_pieces()), extra_ids=100, model_max_length=max_length)
