"""Stage 1, Textual Semantic Erasure: the closed-form edit of cross-attention K/V (paper Sec. 4.1, Eq. 5).

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

from ..errors import TRCEError
from ..models.base import DiffusionAdapter


@dataclass
class StreamStatistics:
    """Normalised second moments of one text stream (float64)."""

    cross: torch.Tensor  # C = 1/n sum e_s e_m^T
    erase_gram: torch.Tensor  # B = 1/n sum e_m e_m^T
    preserve_gram: torch.Tensor  # P = 1/q sum e_k e_k^T
    n: int
    q: int


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
