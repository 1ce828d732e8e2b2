"""What SD3 and FLUX share: a joint-attention transformer with no cross-attention, T5 text tokens projected by
`context_embedder`, and a pooled CLIP vector projected by `time_text_embed.text_embedder.linear_1`.

Text reaches the image only through those two Linear maps: every later text computation (the text stream's
`add_q/k/v_proj`, AdaLN, single-stream blocks) sees their outputs. Stage 1 therefore edits them (as the latest UCE
does for FLUX, and as the TRCE paper's appendix F does for SD3 and FLUX); the text bias is never edited, since Eq. 4
maps W e_m onto W e_s and a shared bias cancels. Stage 2's "visual" set is the image stream's attention.
"""

from __future__ import annotations

import re

import torch

from ..errors import TRCEError
from .base import Blocks, DiffusionAdapter, ParamKind, TokenSegment

CONTEXT_TARGET = "context_embedder.weight"
POOLED_TARGET = "time_text_embed.text_embedder.linear_1.weight"
_SETS = {
    # image stream of the joint blocks (SD3.5-M's image-only attn2 too); never the text side (add_*_proj, to_add_out)
    "visual": re.compile(r"^transformer_blocks\.\d+\.attn2?\.to_(q|k|v|out\.0)\.(weight|bias)$"),
    "kv": re.compile(r"^transformer_blocks\.\d+\.attn\.add_[kv]_proj\.(weight|bias)$"),
}
_SINGLE_STREAM = re.compile(r"^single_transformer_blocks\.\d+\.attn\.to_(q|k|v)\.(weight|bias)$")


def t5_tokens(tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """T5 ids [B, max_length] as SD3/FLUX pipelines tokenize: `</s>` appended, `<pad>` to the length, truncated."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids


def t5_segment(tokenizer, ids: torch.Tensor, start: int = 0) -> TokenSegment:
    return TokenSegment("t5", start, ids, tokenizer.eos_token_id, tokenizer, has_start_token=False)


class DiTAdapter(DiffusionAdapter):
    """Shared parts of the SD3 and FLUX adapters (stream 0 = text tokens, stream 1 = pooled CLIP)."""

    sequence_cap: int  # the pipeline's default `max_sequence_length`

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    @property
    def prediction_type(self) -> str:
        return "flow"

    @property
    def t5_tokenizer(self):
        raise NotImplementedError

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens per prompt: the tokenizer's own limit, capped at the pipeline's default.

        Neither FLUX nor SD3 gives the transformer a text attention mask, so the padding length changes every
        prediction: stage 1, stage 2 and generation must all use this one length.
        """
        return min(int(self.t5_tokenizer.model_max_length), self.sequence_cap)

    def resolve_blocks(self, blocks: Blocks, default: str) -> str:
        if blocks == "encoder":
            raise TRCEError(
                f"blocks: encoder is for UNets; {self.family} is a transformer without an encoder half "
                "(use default or all)"
            )
        return super().resolve_blocks(blocks, default)

    def edit_targets(self, pooled: bool | None = None, blocks: Blocks = "default") -> dict[str, int]:
        self.resolve_blocks(blocks, self.default_edit_blocks)
        out = {CONTEXT_TARGET: 0}
        if self.default_pooled_edit if pooled is None else pooled:
            out[POOLED_TARGET] = 1
        return out

    def trainable_parameter_names(self, kind: ParamKind, blocks: Blocks = "default") -> list[str]:
        blocks = self.resolve_blocks(blocks, self.default_train_blocks)
        names = [n for n, _ in self.denoiser.named_parameters()]
        chosen = [n for n in names if _SETS[kind].search(n)]
        if kind == "visual" and blocks == "all":
            chosen += [n for n in names if _SINGLE_STREAM.search(n)]
        return chosen

    def generation_kwargs(self, guidance: float, n_prompts: int = 1) -> dict:
        return {"guidance_scale": float(guidance), "max_sequence_length": self.max_sequence_length}

    def image_tokens(self, latent_shape: tuple[int, int, int]) -> int:
        """How many image tokens the transformer sees for one latent (what the resolution-dependent shift reads)."""
        p = self.denoiser.config.patch_size
        return (latent_shape[1] // p) * (latent_shape[2] // p)

    def flow_sigmas(self, steps: int) -> list[float] | None:
        """The sigmas the pipeline passes to `set_timesteps` (None: the scheduler's own spacing, as SD3 does)."""
        return None

    def sampling_scheduler(self, steps: int, latent_shape: tuple[int, int, int]):
        """Flow matching exactly as the pipeline sets it: its sigmas, and `mu` from the image token count when the
        scheduler shifts by resolution (FLUX.1-dev, SD3.5 with dynamic shifting)."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        c = scheduler.config
        kwargs = {}
        if c.get("use_dynamic_shifting", False):
            kwargs["mu"] = calculate_shift(
                self.image_tokens(latent_shape),
                c.get("base_image_seq_len", 256),
                c.get("max_image_seq_len", 4096),
                c.get("base_shift", 0.5),
                c.get("max_shift", 1.15),
            )
        sigmas = None if c.get("use_flow_sigmas", False) else self.flow_sigmas(steps)
        if sigmas is None:
            scheduler.set_timesteps(steps, **kwargs)
        else:
            scheduler.set_timesteps(sigmas=sigmas, **kwargs)
        return scheduler
