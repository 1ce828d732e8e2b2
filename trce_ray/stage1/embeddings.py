"""The text embeddings Eq. 5 sums over: e_m / e_s rows per token role, and the preservation second moment."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..concepts import PromptPair
from ..errors import TRCEError
from ..models.base import DiffusionAdapter
from ..models.tokens import key_positions


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def role_rows(adapter: DiffusionAdapter, pairs: list[PromptPair], roles: list[str], eot_m, eot_s) -> tuple[list, list]:
    """(prompt, position) rows in the erase and target embeddings for each requested token role."""
    rows_m, rows_s = [], []
    for i, pair in enumerate(pairs):
        if "eot" in roles:
            rows_m.append((i, int(eot_m[i])))
            rows_s.append((i, int(eot_s[i])))
        if "sot" in roles:
            rows_m.append((i, 0))
            rows_s.append((i, 0))
        if "key" in roles:
            if pair.erase_key is None:
                raise TRCEError(
                    f"token role 'key' needs the keyword marked: erase prompt {i + 1} ({pair.erase!r}) has no "
                    "[bracketed] span"
                )
            if pair.target_key is not None:
                target_pos = key_positions(adapter.tokenizer, pair.target, pair.target_key)
                s_pos = target_pos[-1] if target_pos else int(eot_s[i])
            else:
                s_pos = int(eot_s[i])
            for p in key_positions(adapter.tokenizer, pair.erase, pair.erase_key):
                rows_m.append((i, p))
                rows_s.append((i, s_pos))
    return rows_m, rows_s


def erase_embeddings(
    adapter: DiffusionAdapter,
    pairs: list[PromptPair],
    roles: list[str],
    stream: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """e_m and e_s rows ([n, d], float64) for the requested token roles."""
    em, es = [], []
    for chunk in tqdm(list(_batches(pairs, batch_size)), desc="embed erase prompts", disable=not progress):
        m = adapter.encode_text([p.erase for p in chunk], stream)
        s = adapter.encode_text([p.target for p in chunk], stream)
        rows_m, rows_s = role_rows(adapter, chunk, roles, m.eot_index, s.eot_index)
        hm, hs = m.hidden.double().cpu(), s.hidden.double().cpu()
        em.append(torch.stack([hm[i, p] for i, p in rows_m]))
        es.append(torch.stack([hs[i, p] for i, p in rows_s]))
    return torch.cat(em), torch.cat(es)


def preserve_gram(
    adapter: DiffusionAdapter,
    prompts: list[str],
    mode: str = "all",
    stream: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[torch.Tensor, int]:
    """(sum e_k e_k^T, count) over every token position ("all") or the first [EoT] ("eot") of `prompts`."""
    gram, count = None, 0
    for chunk in tqdm(list(_batches(prompts, batch_size)), desc="embed preserve prompts", disable=not progress):
        out = adapter.encode_text(chunk, stream)
        g, c = gram_of(out.hidden, out.eot_index, mode)
        gram = g if gram is None else gram + g
        count += c
    return gram, count


def gram_of(hidden: torch.Tensor, eot_index: torch.Tensor, mode: str = "all") -> tuple[torch.Tensor, int]:
    """(sum e e^T, count) of one batch of hidden states [B, L, D], in float64."""
    h = hidden.double().cpu()
    rows = h.reshape(-1, h.shape[-1]) if mode == "all" else h[torch.arange(h.shape[0]), eot_index.cpu()]
    return rows.T @ rows, rows.shape[0]
