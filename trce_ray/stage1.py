"""Stage 1, Textual Semantic Erasure: the closed-form edit of cross-attention K/V (paper Sec. 4.1).

Eq. 5 with each sum normalised by its count and eta applied once:

    W' = (1/n sum W e_s e_m^T + eta/q sum W e_k e_k^T) (1/n sum e_m e_m^T + eta/q sum e_k e_k^T)^-1

The numerator is W times a d x d matrix, so W' = W @ M with M = (C + eta P)(B + eta P)^-1 where
C = 1/n sum e_s e_m^T, B = 1/n sum e_m e_m^T, P = 1/q sum e_k e_k^T. M depends only on the text stream, not on the
layer: it is solved once (float64 Cholesky) and applied to every K and V matrix that reads that stream.
The optional ridge adds UCE's lambda*W to the numerator and lambda*I to the inverted factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .concepts import PromptPair
from .errors import TRCEError
from .models.base import DiffusionAdapter
from .models.tokens import key_positions


@dataclass
class StreamStatistics:
    """Normalised second moments of one text stream (float64)."""

    cross: torch.Tensor  # C = 1/n sum e_s e_m^T
    erase_gram: torch.Tensor  # B = 1/n sum e_m e_m^T
    preserve_gram: torch.Tensor  # P = 1/q sum e_k e_k^T
    n: int
    q: int


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


def stream_statistics(e_m: torch.Tensor, e_s: torch.Tensor, gram_k: torch.Tensor, q: int) -> StreamStatistics:
    n = e_m.shape[0]
    return StreamStatistics(cross=e_s.T @ e_m / n, erase_gram=e_m.T @ e_m / n, preserve_gram=gram_k / q, n=n, q=q)


RCOND = 1e-12  # smallest/largest eigenvalue below which float64 cannot invert the factor meaningfully


def solve_map(stats: StreamStatistics, eta: float, ridge: float = 0.0) -> torch.Tensor:
    """M with W' = W @ M for every projection reading this stream (Eq. 5, float64)."""
    d = stats.cross.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    numer = stats.cross + eta * stats.preserve_gram + ridge * eye
    denom = stats.erase_gram + eta * stats.preserve_gram + ridge * eye
    eig = torch.linalg.eigvalsh(denom)
    chol, info = torch.linalg.cholesky_ex(denom)
    if int(info) != 0 or eig[0] <= eig[-1] * RCOND:
        raise TRCEError(
            f"the stage-1 system is singular ({stats.n} erase and {stats.q} preservation embeddings do not span the "
            f"{d}-dim text space); add preservation prompts, or set stage1.ridge > 0 (e.g. 1e-4) as in UCE"
        )
    # M = numer @ denom^-1  <=>  M^T = denom^-1 @ numer^T (denom is symmetric)
    return torch.cholesky_solve(numer.T.contiguous(), chol).T


@torch.no_grad()
def edited_weights(adapter: DiffusionAdapter, maps: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """W' = W @ M for every stage-1 target, in the parameter's dtype; the model itself is not modified."""
    params = dict(adapter.denoiser.named_parameters())
    out = {}
    for name, stream in adapter.edit_targets().items():
        w = params[name]
        out[name] = (w.detach().double().cpu() @ maps[stream]).to(w.dtype)
    return out


def diagnostics(
    adapter: DiffusionAdapter,
    delta: dict[str, torch.Tensor],
    e_m: torch.Tensor,
    e_s: torch.Tensor,
    gram_k: torch.Tensor,
    q: int,
) -> dict[str, float]:
    """How well the edit did what Eq. 4 asks, averaged over edited matrices.

    erase_residual: ||W' e_m - W e_s|| / ||W e_s|| (0 = malicious embeddings fully remapped).
    preserve_drift: sqrt(tr((W'-W) P (W'-W)^T) / tr(W P W^T)) over the preservation second moment P.
    """
    params = dict(adapter.denoiser.named_parameters())
    res, drift = [], []
    p = gram_k / q
    for name, new in delta.items():
        w = params[name].detach().double().cpu()
        w2 = new.double()
        res.append(float(((e_m @ w2.T - e_s @ w.T).norm(dim=1) / (e_s @ w.T).norm(dim=1).clamp_min(1e-12)).mean()))
        dw = w2 - w
        drift.append(float((torch.trace(dw @ p @ dw.T) / torch.trace(w @ p @ w.T)).clamp_min(0).sqrt()))
    return {"erase_residual": sum(res) / len(res), "preserve_drift": sum(drift) / len(drift)}
