"""Stage 1, Textual Semantic Erasure: the closed-form edit of cross-attention K/V (paper Sec. 4.1, Eq. 5).

Eq. 5 as printed, with unnormalised sums over the erase/target rows i and the preservation rows j:

    W' = (sum_i W e_s,i e_m,i^T + eta sum_j W e_k,j e_k,j^T) (sum_i e_m,i e_m,i^T + eta sum_j e_k,j e_k,j^T)^-1

Every convention (`stage1.convention`, docs/stage1.md) scales the same three sums, S_sm = sum e_s e_m^T,
S_mm = sum e_m e_m^T and S_kk = sum e_k e_k^T, as a S_sm + b S_kk over a S_mm + b S_kk:

    paper       a = 1               b = eta                                   (Eq. 5 as printed)
    normalised  a = 1/n             b = eta / q                               (n, q: erase and preservation rows)
    authors     a = 1/n_prompts     b = eta^2 * N_c / (30000 * q_prompts)     (the authors' code, see below)

The numerator is W times a d x d matrix, so W' = W @ M with M = (a S_sm + b S_kk + r I)(a S_mm + b S_kk + r I)^-1
(r: the optional ridge, UCE's lambda*W / lambda*I). M depends only on the text stream, not on the layer: it is
solved once (float64 Cholesky) and applied to every K and V matrix that reads that stream. Without a ridge only
b / a matters, which is what docs/stage1.md converts between conventions.

`authors` is what ddgoodgood/TRCE's `src/cfr_utils.py` computes (`closed_form_refinement`): the erase sums divided
by the number of prompts, and the preservation term `preserve_scale * cache / 3e4` where the cache was itself
already multiplied by `preserve_scale` (eta enters squared) and holds all-token sums over N_c COCO captions (MACE's
`src/cache_coco.py`). We estimate the cache from the preservation prompts given: N_c times their mean
per-prompt all-token sum. Not copied: the word-counted [EoT] index, float32 `torch.inverse`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import TRCEError
from ..models.base import DiffusionAdapter

CONVENTIONS = ("paper", "authors", "normalised")
AUTHORS_DIVISOR = 3e4  # the constant the authors divide their COCO cache by (cfr_utils.py, closed_form_refinement)
AUTHORS_CACHE_CAPTIONS = 616_767  # captions in COCO-2014 train + val, all summed by MACE's src/cache_coco.py


@dataclass
class StreamStatistics:
    """Unnormalised sums of Eq. 5 for one text stream (float64), and what they were summed over."""

    cross: torch.Tensor  # S_sm = sum_i e_s,i e_m,i^T
    erase_gram: torch.Tensor  # S_mm = sum_i e_m,i e_m,i^T
    preserve_gram: torch.Tensor  # S_kk = sum_j e_k,j e_k,j^T
    n: int  # erase rows (one per prompt and token role)
    q: int  # preservation rows (one per prompt, or one per token position)
    n_prompts: int  # erase prompts
    q_prompts: int  # preservation prompts


def stream_statistics(
    e_m: torch.Tensor, e_s: torch.Tensor, gram_k: torch.Tensor, q: int, n_prompts: int, q_prompts: int
) -> StreamStatistics:
    """The sums of Eq. 5 from the erase/target rows [n, d] and the preservation sum `gram_k` over `q` rows."""
    return StreamStatistics(e_s.T @ e_m, e_m.T @ e_m, gram_k, e_m.shape[0], q, n_prompts, q_prompts)


def scaled_terms(stats: StreamStatistics, eta: float, convention: str) -> tuple[torch.Tensor, ...]:
    """(a S_sm, a S_mm, b S_kk) of `convention` (module docstring)."""
    if convention == "paper":
        return stats.cross, stats.erase_gram, eta * stats.preserve_gram
    if convention == "normalised":
        return stats.cross / stats.n, stats.erase_gram / stats.n, eta * (stats.preserve_gram / stats.q)
    if convention == "authors":
        b = eta * eta * AUTHORS_CACHE_CAPTIONS / AUTHORS_DIVISOR
        return (
            stats.cross / stats.n_prompts,
            stats.erase_gram / stats.n_prompts,
            b * (stats.preserve_gram / stats.q_prompts),
        )
    raise TRCEError(f"unknown stage-1 convention {convention!r}; choose from {', '.join(CONVENTIONS)}")


RCOND = 1e-12  # smallest/largest eigenvalue below which float64 cannot invert the factor meaningfully


def solve_map(stats: StreamStatistics, eta: float, convention: str, ridge: float = 0.0) -> torch.Tensor:
    """M with W' = W @ M for every projection reading this stream (Eq. 5 in `convention`, float64)."""
    d = stats.cross.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    cross, erase_gram, preserve = scaled_terms(stats, eta, convention)
    numer = cross + preserve + ridge * eye
    denom = erase_gram + preserve + ridge * eye
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
def edited_weights(
    adapter: DiffusionAdapter, maps: dict[int, torch.Tensor], targets: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """W' = W @ M for every stage-1 target (default: the adapter's), in the parameter's dtype; the model itself is
    not modified. Only the input columns that read the text stream change (SDXL's add_embedding keeps its time
    columns bit for bit)."""
    params = dict(adapter.denoiser.named_parameters())
    out = {}
    for name, stream in (targets or adapter.edit_targets()).items():
        w = params[name].detach().cpu()
        cols = adapter.edit_columns(name)
        new = w.clone()
        new[:, cols] = (w[:, cols].double() @ maps[stream]).to(w.dtype)
        out[name] = new
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
        cols = adapter.edit_columns(name)
        w = params[name].detach().double().cpu()[:, cols]
        w2 = new.double()[:, cols]
        res.append(float(((e_m @ w2.T - e_s @ w.T).norm(dim=1) / (e_s @ w.T).norm(dim=1).clamp_min(1e-12)).mean()))
        dw = w2 - w
        drift.append(float((torch.trace(dw @ p @ dw.T) / torch.trace(w @ p @ w.T)).clamp_min(0).sqrt()))
    return {"erase_residual": sum(res) / len(res), "preserve_drift": sum(drift) / len(drift)}
