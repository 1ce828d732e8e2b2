"""Token roles ([SoT], [KEY], first [EoT]) located from token ids, never from word counts."""

from __future__ import annotations

import torch


def first_eot_index(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Position of the first [EoT] in each row; a truncated prompt keeps its [EoT] at the last position."""
    is_eot = input_ids == eos_id
    if not bool(is_eot.any(-1).all()):
        raise ValueError("a tokenized prompt has no [EoT] token; tokenize with truncation and special tokens")
    return is_eot.int().argmax(-1)


def key_positions(tokenizer, prompt: str, span: tuple[int, int]) -> list[int]:
    """Token positions covering prompt[span[0]:span[1]], counting [SoT] as position 0.

    CLIP's pre-tokenizer splits on words before BPE, so the tokens of a prefix are a prefix of the tokens of the
    whole prompt; the key's positions are the difference in length. Positions past the 77-token limit are dropped.
    """
    start, end = span
    n_before = len(tokenizer(prompt[:start], add_special_tokens=False).input_ids)
    n_upto = len(tokenizer(prompt[:end], add_special_tokens=False).input_ids)
    last = tokenizer.model_max_length - 2  # room for [SoT] and [EoT]
    return [1 + i for i in range(n_before, n_upto) if 1 + i <= last]


def token_count(tokenizer, prompts: list[str]) -> list[int]:
    """Tokens of each prompt with [SoT] and [EoT], before truncation (compare with `tokenizer.model_max_length`)."""
    return [len(ids) for ids in tokenizer(list(prompts), truncation=False).input_ids]
