"""SD3 / SD3.5: CLIP-L and CLIP-G penultimate states (768 + 1280 = 2048), zero-padded to T5's width (4096) and
followed along the sequence by T5's states (77 + 256 tokens), all read by one `context_embedder`; the two CLIP
pooled projections concatenated (2048) are read by `time_text_embed.text_embedder.linear_1`.

Conditioning follows diffusers' `StableDiffusion3Pipeline.encode_prompt`; "" is encoded (SD3 has no
`force_zeros_for_empty_prompt`). In stage 1 the CLIP rows and the T5 rows of the joint sequence are different rows
of the same matrix: both enter the sums, with token roles chosen per segment ("clip", "t5").
"""

from __future__ import annotations

import torch

from .base import Conditioning, TextEmbeddings
from .dit import DiTAdapter, t5_segment, t5_tokens
from .sd import clip_segment, clip_token_pair, vae_latent_shape


class SD3Adapter(DiTAdapter):
    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    stream_names = ("joint", "pooled")
    default_token_roles = {"clip": ("eot",), "t5": ("eot", "last")}
    default_pooled_edit = False  # exactly singular without a ridge (below)
    singular_hints = {
        1: "SD3's pooled vector joins two LayerNorm outputs (each on an affine hyperplane), so the concatenation "
        "always lies in a hyperplane through 0 and no prompt set spans it: editing it needs stage1.ridge > 0"
    }
    sequence_cap = 256  # StableDiffusion3Pipeline's max_sequence_length default

    @property
    def t5_tokenizer(self):
        return self.pipe.tokenizer_3

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list]:
        """(joint token states [B, 77 + L, 4096], pooled [B, 2048], token segments) for `prompts`."""
        p = self.pipe
        ids, eot = clip_token_pair((p.tokenizer, p.tokenizer_2), prompts)
        outs = [
            enc(i.to(enc.device), output_hidden_states=True) for i, enc in zip(ids, (p.text_encoder, p.text_encoder_2))
        ]
        clip = torch.cat([o.hidden_states[-2] for o in outs], dim=-1)
        pooled = torch.cat([o[0] for o in outs], dim=-1)  # each encoder's projected text_embeds
        segments = [clip_segment(p.tokenizer, ids[0], joint_eot=eot)]  # roles from tokenizer 1 (as OpenCLIP)
        width, length = self.denoiser.config.joint_attention_dim, self.max_sequence_length
        if p.text_encoder_3 is None:  # the pipeline's T5-less mode: zeros in place of T5
            t5 = torch.zeros(len(prompts), length, width, dtype=clip.dtype, device=clip.device)
        else:
            t5_ids = t5_tokens(p.tokenizer_3, prompts, length)
            t5 = p.text_encoder_3(t5_ids.to(p.text_encoder_3.device))[0]
            segments.append(t5_segment(p.tokenizer_3, t5_ids, start=clip.shape[1]))
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5.to(clip.dtype)], dim=-2), pooled, segments

    def encode_text(self, prompts: list[str], stream: int = 0) -> TextEmbeddings:
        hidden, pooled, segments = self._encode(prompts)
        if stream == 0:
            return TextEmbeddings(hidden=hidden, segments=segments)
        if stream == 1:
            return TextEmbeddings(hidden=pooled[:, None])
        raise ValueError(f"SD3 has text streams 0 (joint tokens) and 1 (pooled), got stream={stream}")

    def condition(self, prompts: list[str]) -> Conditioning:
        hidden, pooled, _ = self._encode(prompts)
        return Conditioning(hidden=hidden, pooled=pooled)

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        t = t.to(latents.dtype).expand(latents.shape[0])  # SD3 takes the scheduler's timestep (sigma * 1000) as is
        return self.denoiser(
            hidden_states=latents,
            timestep=t,
            encoder_hidden_states=cond.hidden,
            pooled_projections=cond.pooled,
            return_dict=False,
        )[0]

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        return vae_latent_shape(self.pipe, self.denoiser, height, width)
