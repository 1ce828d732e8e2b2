"""CLIP from a user-given weights location, and CLIP score (100 x cosine) through torchmetrics.

No CLIP weights ship with trce-ray: `eval.clip_model` (CLIP score, ViT-B/32 in the paper) and `eval.q16_clip`
(Q16, ViT-L/14) name a transformers-layout folder (config.json, model.safetensors, the processor files) or a
hub id such as openai/clip-vit-base-patch32 that the machine can download or has cached.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import TRCEError


class CLIPFeatures(torch.nn.Module):
    """A CLIPModel whose `get_image_features`/`get_text_features` return the projected embeddings as tensors.

    transformers 5 returns a `BaseModelOutputWithPooling` from those methods; torchmetrics 1.9's CLIPScore still
    expects tensors (transformers 4 behaviour), so it is given this adapter instead of the bare model.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values, **kwargs))

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs))


def load_clip(path: str, device: str = "cpu", field: str = "eval.clip_model"):
    """(CLIPFeatures, CLIPProcessor) from a transformers folder or hub id, safetensors weights only.

    Raises:
        TRCEError: the location does not exist or holds no loadable CLIP.
    """
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    p = Path(path).expanduser()
    if not p.exists() and ("/" not in path or path.startswith((".", "/", "~"))):
        raise TRCEError(f"CLIP weights {path} ({field}) do not exist")
    source = str(p) if p.exists() else path
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the torchvision-less image-processor fallback warns on every load
    try:
        model = CLIPModel.from_pretrained(source, use_safetensors=True).eval().to(device)
        processor = CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TRCEError(f"could not load CLIP from {path} ({field}): {first}") from None
    finally:
        hf_logging.set_verbosity(previous)
    logging.getLogger("torchmetrics").setLevel(logging.ERROR)
    return CLIPFeatures(model), processor


def to_uint8_chw(images) -> list[torch.Tensor]:
    """PIL images to uint8 [3, H, W] tensors (what torchmetrics' image metrics take)."""
    return [torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1) for im in images]


@torch.no_grad()
def image_embeddings(model: CLIPFeatures, processor, images) -> torch.Tensor:
    """Projected CLIP image embeddings [N, P] (not normalised)."""
    device = next(model.parameters()).device
    pixels = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    return model.get_image_features(pixels.to(device)).float().cpu()


class ClipScoreDetector:
    """Per-image CLIP score, 100 * max(cos(image, caption), 0) (Hessel et al.), computed by torchmetrics."""

    name = "clip"

    def __init__(self, path: str, device: str = "cpu"):
        self.model, self.processor = load_clip(path, device, "eval.clip_model")
        self.device = device

    @torch.no_grad()
    def __call__(self, images, prompts: list[str]) -> list[float]:
        from torchmetrics.functional.multimodal import clip_score

        def model_and_processor():
            return self.model, self.processor

        # One call per image: torchmetrics returns the batch mean, and the per-image value is what results keep.
        return [
            float(clip_score(img.to(self.device), text, model_name_or_path=model_and_processor))
            for img, text in zip(to_uint8_chw(images), prompts)
        ]
