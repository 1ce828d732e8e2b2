"""FID: features are extracted per image (cached beside the images); `frechet_distance` compares two feature sets
in float64 (the one Frechet distance of the project: the toy benchmark uses it too).

`eval.fid_features`:
- "inception": torchmetrics' InceptionV3 (FID's standard 2048-d pool features). It needs the `torch-fidelity`
  package; `eval.fid_weights` names the weights file `weights-inception-2015-12-05-6726825d.pth` (without it,
  torch-fidelity downloads that file on first use).
- a TorchScript file: any network taking uint8 images [N, 3, H, W] (0..255, the generated size) to features [N, F].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import TRCEError


def frechet_distance(real, fake) -> float:
    """FID of two feature sets [N, F] (numpy or torch), in float64:
    ||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r^1/2 S_f S_r^1/2)^1/2).

    Symmetric eigendecompositions replace scipy's sqrtm: exact for PSD covariances, no complex round-off.
    """
    a, b = torch.as_tensor(real).double(), torch.as_tensor(fake).double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"FID needs two [N, F] feature sets of one width, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise TRCEError(f"FID needs at least 2 images on each side, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * cross)


def fid_feature_network(features: str, weights: str | None) -> torch.nn.Module:
    if features == "inception":
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            raise TRCEError(
                "eval.fid_features 'inception' needs the torch-fidelity package (pip install torch-fidelity); "
                "or set eval.fid_features to a TorchScript feature network"
            ) from None
        from torchmetrics.image.fid import NoTrainInceptionV3

        if weights is not None and not Path(weights).expanduser().is_file():
            raise TRCEError(f"Inception weights {weights} (eval.fid_weights) do not exist")
        return NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(Path(weights).expanduser()) if weights else None,
        )
    path = Path(features).expanduser()
    if not path.is_file():
        raise TRCEError(
            f"FID feature network {features} (eval.fid_features) does not exist; use 'inception' or a TorchScript file"
        )
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise TRCEError(f"FID feature network {features} is not a TorchScript file: {first}") from None


class FidFeatureDetector:
    """Feature vectors of images for FID (float32 [N, F])."""

    name = "fid"

    def __init__(self, features: str, weights: str | None, device: str = "cpu"):
        self.net = fid_feature_network(features, weights).eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images) -> np.ndarray:
        from .clip import to_uint8_chw

        tensors = to_uint8_chw(images)
        sizes = {tuple(t.shape) for t in tensors}
        if len(sizes) > 1:
            # Real photos differ in size: run them one at a time so no resize policy is imposed here.
            return np.concatenate([self._run(t[None]) for t in tensors])
        return self._run(torch.stack(tensors))

    def _run(self, x: torch.Tensor) -> np.ndarray:
        out = self.net(x.to(self.device))
        return out.reshape(out.shape[0], -1).float().cpu().numpy()
