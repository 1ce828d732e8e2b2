"""Token roles, located from token ids and character offsets, never from word counts.

Roles, per token segment (a run of positions from one tokenizer: "clip" or "t5"):

* `eot`: the first [EoT] (CLIP) or the `</s>` T5 appends after the last piece.
* `last`: the last content token, just before `eot` (UCE's choice for SDXL and FLUX).
* `key`: the tokens of the [bracketed] keyword, found from the tokenizer's character offsets.
* `all`: every non-pad position, `[SoT]` (CLIP) through `eot`.
* `sot`: CLIP's [SoT] at position 0 (the paper's Table 4); T5 has no start token.
* `pad`: CLIP's padding positions after the first [EoT]. CLIP's attention is causal, so they have seen the whole
  prompt, and a UNet cross-attends to all 77 positions: on the toy world the colour is read from them as much as from
  the [EoT] (docs/toy.md, "Why some colours resist"). Erase and target positions pair counting from each prompt's
  [EoT]. CLIP only: T5 attends both ways and its padding is masked out.
"""

from __future__ import annotations

import torch

from ..errors import TRCEError

ROLES = ("eot", "last", "key", "all", "sot", "pad")
CLIP_ONLY = ("sot", "pad")
SEGMENTS = ("clip", "t5")
T5_ROLES = (
    "eot (the </s> T5 appends after the prompt), last (the last content token, before </s>), key (the [bracketed] "
    "keyword's pieces), all (every non-pad position); T5 has no start token"
)


def first_eot_index(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Position of the first [EoT] in each row; a truncated prompt keeps its [EoT] at the last position."""
    is_eot = input_ids == eos_id
    if not bool(is_eot.any(-1).all()):
        raise ValueError("a tokenized prompt has no [EoT] token; tokenize with truncation and special tokens")
    return is_eot.int().argmax(-1)


def key_positions(tokenizer, prompt: str, span: tuple[int, int], max_length: int | None = None) -> list[int]:
    """Token positions (counting special tokens, as the encoder sees them) covering prompt[span[0]:span[1]].

    Uses the tokenizer's character offsets, which work for CLIP's BPE and for T5's unigram pieces alike. Positions
    cut off by the `max_length` limit (default: the tokenizer's) are dropped.
    """
    start, end = span
    enc = tokenizer(
        prompt,
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    return [
        i
        for i, ((s, e), special) in enumerate(zip(enc["offset_mapping"], enc["special_tokens_mask"]))
        if not special and e > s and s < end and e > start
    ]


def parse_roles(tokens: list[str] | None, segments: tuple[str, ...], defaults: dict) -> dict[str, list[str]]:
    """Token roles per segment: "segment:role" applies to that segment, a bare "role" to every segment that has it
    (`sot` only exists on CLIP); a segment no item names keeps its default. None = the family's defaults.

    Raises:
        TRCEError: a role or segment this model's text does not have, explained in one sentence.
    """
    out: dict[str, list[str]] = {s: [] for s in segments}
    for item in tokens or []:
        seg, _, role = item.rpartition(":")
        if role not in ROLES:
            raise TRCEError(f"unknown token role {item!r}; roles are {', '.join(ROLES)}")
        if seg and seg not in segments:
            raise TRCEError(
                f"token role {item!r} names the {seg} segment, but this model's text has only {', '.join(segments)}"
            )
        if role in CLIP_ONLY and (seg == "t5" or not seg and segments == ("t5",)):
            raise TRCEError(f"token role {role!r} does not exist on the t5 segment; T5 roles are: {T5_ROLES}")
        for s in [seg] if seg else segments:
            if not (role in CLIP_ONLY and s == "t5") and role not in out[s]:
                out[s].append(role)
    return {s: out[s] or list(defaults[s]) for s in segments}


def role_notes(tokens: list[str] | None, roles: dict[str, list[str]]) -> list[str]:
    """Plain-language notes for chosen roles that do not mean on T5 what they mean on CLIP."""
    notes = []
    if tokens is not None and "eot" in roles.get("t5", []):
        notes.append(
            "on the t5 segment 'eot' is the </s> token T5 appends: T5 attends both ways, so </s> is not the prompt "
            "summary that CLIP's causal [EoT] is (the paper's reason for eot); T5 roles are: " + T5_ROLES
        )
    return notes


def role_positions(segment, i: int, role: str, key: list[int] | None = None) -> list[int]:
    """Positions of `role` in prompt `i` of a `TokenSegment` (`key`: its keyword's positions, for the key role).

    `eot` and `all` end at the segment's [EoT] (for two CLIP tokenizers side by side, where both halves reached it);
    `last` is the last content token of the segment's own tokenizer.
    """
    eot = int(segment.eot_index[i])
    if role == "eot":
        return [eot]
    if role == "last":
        own = int(first_eot_index(segment.input_ids[i : i + 1], segment.eos_id)[0])
        first = 1 if segment.has_start_token else 0
        return [own - 1 if own - 1 >= first else own]  # an empty prompt has no content token: fall back to eot
    if role == "all":
        return list(range(eot + 1))
    if role == "sot":
        return [0]
    if role == "pad":
        return list(range(eot + 1, segment.input_ids.shape[1]))
    if role == "key":
        return list(key or [])
    raise TRCEError(f"unknown token role {role!r}; roles are {', '.join(ROLES)}")


def token_count(tokenizer, prompts: list[str]) -> list[int]:
    """Tokens of each prompt with its special tokens, before truncation (compare with `tokenizer.model_max_length`)."""
    return [len(ids) for ids in tokenizer(list(prompts), truncation=False, verbose=False).input_ids]
