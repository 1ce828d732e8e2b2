"""The text embeddings Eq. 5 sums over: e_m / e_s rows per token role, and the preservation second moment.

Rows come from one text stream at a time. A token stream may hold several token segments (SD3: CLIP then T5 in one
sequence); each segment contributes the rows of its own token roles, all to the same sums. A pooled stream has one
vector per prompt, so each pair gives one (e_m, e_s) row and each preservation prompt one e_k row, whatever the roles.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..concepts import PromptPair
from ..errors import TRCEError
from ..models.base import DiffusionAdapter, TextEmbeddings
from ..models.tokens import key_positions, parse_roles, role_positions

Roles = dict[str, list[str]]  # token roles per segment name, e.g. {"clip": ["eot"], "t5": ["eot", "last"]}


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def resolve_roles(adapter: DiffusionAdapter, roles: list[str] | Roles | None) -> Roles:
    """Roles per segment of `adapter`'s text, from `stage1.tokens` (a list, "segment:role" items) or a mapping."""
    if isinstance(roles, dict):
        return {s: list(roles.get(s) or adapter.default_token_roles[s]) for s in adapter.segment_names()}
    return parse_roles(roles, adapter.segment_names(), adapter.default_token_roles)


def erase_key_positions(seg, pair: PromptPair, i: int, length: int) -> list[int]:
    """Positions of erase prompt i's [keyword] in token segment `seg` (`length` tokens).

    Raises:
        TRCEError: the keyword lies past the segment's token limit, where the encoder never sees it.
    """
    found = key_positions(seg.tokenizer, pair.erase, pair.erase_key, length)
    if not found:
        raise TRCEError(
            f"erase prompt {i + 1} ({pair.erase[:50]!r}...) has its [keyword] past token {length} of the {seg.name} "
            "segment, where the text encoder cuts prompts; shorten the prompt or put the keyword earlier"
        )
    return found


def check_key_roles(adapter: DiffusionAdapter, pairs: list[PromptPair], roles: list[str] | Roles | None) -> None:
    """Before any embedding work: every marked keyword must lie within the token limit of each segment whose roles
    include 'key' (one prompt is encoded per stream to learn its segments; the rest is tokenization)."""
    roles = resolve_roles(adapter, roles)
    if not any("key" in r for r in roles.values()) or not pairs:
        return
    for stream in sorted(set(adapter.edit_targets().values())):
        for seg in adapter.encode_text([pairs[0].erase], stream).segments:
            if "key" in roles[seg.name]:
                for i, pair in enumerate(pairs):
                    if pair.erase_key is not None:
                        erase_key_positions(seg, pair, i, seg.input_ids.shape[1])


def role_rows(pairs: list[PromptPair], roles: Roles, m: TextEmbeddings, s: TextEmbeddings) -> tuple[list, list]:
    """(prompt, position) rows in the erase (`m`) and target (`s`) embeddings, paired row by row.

    `eot`, `last` and `sot` pair like with like; each `key` token of the erase prompt pairs with the target's last
    key token (if marked) or its `eot`; `all` pairs position j of the erase prompt with position j of the target,
    for every non-pad position j of the erase prompt (both are padded to the same length); `pad` pairs the j-th
    position after the erase prompt's [EoT] with the j-th after the target's, as many as both have.
    """
    rows_m, rows_s = [], []
    if m.pooled:
        return [(i, 0) for i in range(len(pairs))], [(i, 0) for i in range(len(pairs))]
    for seg_m, seg_s in zip(m.segments, s.segments):
        eot_s = seg_s.eot_index.tolist()
        length = seg_m.input_ids.shape[1]
        for i, pair in enumerate(pairs):
            for role in roles[seg_m.name]:
                if role == "key":
                    if pair.erase_key is None:
                        raise TRCEError(
                            f"token role 'key' needs the keyword marked: erase prompt {i + 1} ({pair.erase!r}) has "
                            "no [bracketed] span"
                        )
                    pm = erase_key_positions(seg_m, pair, i, length)
                    marked = pair.target_key is not None
                    target = key_positions(seg_s.tokenizer, pair.target, pair.target_key, length) if marked else []
                    ps = (target[-1:] or [eot_s[i]]) * len(pm)
                elif role == "all":
                    pm = ps = role_positions(seg_m, i, "all")
                elif role == "pad":  # j-th position after the erase prompt's [EoT] with the target's j-th
                    pm, ps = role_positions(seg_m, i, "pad"), role_positions(seg_s, i, "pad")
                    pm, ps = pm[: len(ps)], ps[: len(pm)]
                else:
                    pm, ps = role_positions(seg_m, i, role), role_positions(seg_s, i, role)
                rows_m += [(i, seg_m.start + p) for p in pm]
                rows_s += [(i, seg_s.start + p) for p in ps]
    return rows_m, rows_s


def erase_embeddings(
    adapter: DiffusionAdapter,
    pairs: list[PromptPair],
    roles: list[str] | Roles | None,
    stream: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """e_m and e_s rows ([n, d], float64) of `stream` for the requested token roles."""
    roles = resolve_roles(adapter, roles)
    em, es = [], []
    for chunk in tqdm(list(_batches(pairs, batch_size)), desc="embed erase prompts", disable=not progress):
        m = adapter.encode_text([p.erase for p in chunk], stream)
        s = adapter.encode_text([p.target for p in chunk], stream)
        rows_m, rows_s = role_rows(chunk, roles, m, s)
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
    """(sum e_k e_k^T, count) over every position the edited matrices read ("all", padding included) or the first
    [EoT] / </s> of each token segment ("eot") of `prompts`; a pooled stream has one row per prompt."""
    gram, count = None, 0
    for chunk in tqdm(list(_batches(prompts, batch_size)), desc="embed preserve prompts", disable=not progress):
        out = adapter.encode_text(chunk, stream)
        eot = None if out.pooled else torch.stack([seg.start + seg.eot_index for seg in out.segments], dim=1)
        g, c = gram_of(out.hidden, eot, "all" if out.pooled else mode)
        gram = g if gram is None else gram + g
        count += c
    return gram, count


def gram_of(hidden: torch.Tensor, eot_index: torch.Tensor | None, mode: str = "all") -> tuple[torch.Tensor, int]:
    """(sum e e^T, count) of one batch of hidden states [B, L, D], in float64; `eot_index` is [B] or [B, segments]."""
    h = hidden.double().cpu()
    if mode == "all":
        rows = h.reshape(-1, h.shape[-1])
    else:
        idx = eot_index.cpu().reshape(h.shape[0], -1)
        rows = torch.cat([h[torch.arange(h.shape[0]), idx[:, k]] for k in range(idx.shape[1])])
    return rows.T @ rows, rows.shape[0]
