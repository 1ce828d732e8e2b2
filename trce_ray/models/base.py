"""The interface every model family implements, so stage 1, stage 2 and evaluation never branch on family.

Families differ in how text reaches the denoiser: SD-1.x/2.x feed one CLIP encoder's hidden states into every
cross-attention `to_k`/`to_v`; SDXL concatenates two CLIP encoders and adds a pooled vector through `add_embedding`;
SD3 and FLUX have no cross-attention and project text tokens through `context_embedder` and a pooled CLIP vector
through `time_text_embed.text_embedder`. The adapter hides that behind *text streams* (one per vector space that
editable matrices read) and a `Conditioning` bundle that `predict_noise` consumes.

The contract (what stage 1, stage 2's sampler/cache/loss and evaluation may rely on, for every family):

* **Latents are unpacked** `[B, C, H, W]` everywhere: `latent_shape` gives `(C, H, W)`, samplers draw noise of that
  shape, caches store it, `predict_noise` takes and returns it. FLUX's 2x2 packing, `img_ids` and `txt_ids` (no batch
  dimension) are built inside `predict_noise`, so nothing outside the adapter knows about them.
* **Trajectories** (stage 2's cache) use `sampling_scheduler(steps, latent_shape)`: DDIM for SD-1.x/2.x (the
  paper), the pipeline's own scheduler for SDXL, flow matching with the pipeline's sigmas (and FLUX's resolution-
  dependent shift `mu`) for SD3 and FLUX.
* **`t` is a float tensor `[B]` in the scheduler's own timestep units**: `scheduler.timesteps` values as the pipeline
  passes them (DDIM/Euler: 0..999; flow matching: sigma * 1000). `predict_noise` converts as the pipeline does (FLUX
  divides by 1000; SD3 and the UNets take it as is). Do not int-truncate flow-matching timesteps.
* **`latents` are the denoiser's input as the pipeline gives it**, i.e. after `scheduler.scale_model_input` (a no-op
  for DDIM and flow matching, not for Euler).
* **`predict_noise` returns the model's native prediction** in the latents' shape; `prediction_type` says what it is:
  "epsilon" (noise), "v_prediction" (SD-2.x 768 / some SDXL fine-tunes) or "flow" (velocity `noise - x0` of
  rectified flow, SD3 and FLUX). Losses that are linear in the prediction need no conversion.
* **`condition(prompts)`** returns the full conditioning of a batch of prompts, padded to fixed lengths so batches
  concatenate; `""` gives the family's unconditional branch as its pipeline builds it (SDXL with
  `force_zeros_for_empty_prompt`: zeros, not the encoding of ""). FLUX models with `guidance_embeds` get
  `extra["guidance"]` (`[B]`, the raw scale, default the pipeline's 3.5; set `adapter.guidance_scale`). SDXL's
  `add_time_ids` are `(h, w, 0, 0, h, w)` of the image the latents decode to (the pipeline's default micro-
  conditioning), built in `predict_noise` from the latent shape, so conditioning never depends on resolution.
* **Parameter names** are those of `denoiser.named_parameters()`; deltas and LoRA files use them.
* **Text streams** (stage 1): `encode_text(prompts, stream)` gives what the editable matrices of that stream read;
  `edit_targets()` maps each edited weight to its stream; `edit_columns(name)` says which input columns of it read the
  stream (all of them, except SDXL's `add_embedding.linear_1` whose text columns come before the time columns).
  Token roles are located per *token segment* (`TokenSegment`: a run of positions from one tokenizer, "clip" or "t5");
  a pooled stream has one vector per prompt and no token roles.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from ..errors import TRCEError
from .tokens import first_eot_index

ParamKind = Literal["visual", "kv"]
PredictionType = Literal["epsilon", "v_prediction", "flow"]
Blocks = Literal["default", "encoder", "all"]


@dataclass
class TokenSegment:
    """A run of positions in `TextEmbeddings.hidden` produced by one tokenizer; token roles are found per segment."""

    name: str  # "clip" or "t5": the name `stage1.tokens` uses ("t5:last")
    start: int  # position of the segment's first token in `hidden`
    input_ids: torch.Tensor  # [B, Ls] token ids, padded as the model sees them
    eos_id: int  # CLIP's [EoT] or T5's </s>: the first one closes the prompt
    tokenizer: Any  # maps a keyword's character span to token positions (the "key" role)
    has_start_token: bool  # CLIP has [SoT] at position 0; T5 has none
    joint_eot: torch.Tensor | None = None  # [B] when two tokenizers share the segment (SDXL, SD3): see eot_index

    @property
    def eot_index(self) -> torch.Tensor:
        """[B] position (within the segment) of the first [EoT] / </s>, from token ids, never from word counts.

        With two CLIP tokenizers side by side it is the first position where both halves have reached their [EoT]:
        they can differ, since diffusers' second tokenizer splits "!!" into two "!" pad tokens (diffusers#4153).
        """
        return first_eot_index(self.input_ids, self.eos_id) if self.joint_eot is None else self.joint_eot


@dataclass
class TextEmbeddings:
    """What one text stream produces for a batch of prompts (stage 1 reads rows of `hidden`)."""

    hidden: torch.Tensor  # [B, L, D]: exactly what the editable matrices read ([B, 1, P] for a pooled stream)
    segments: list[TokenSegment] = field(default_factory=list)  # empty for a pooled stream

    @property
    def pooled(self) -> bool:
        return not self.segments

    @property
    def input_ids(self) -> torch.Tensor:
        """Token ids of the first segment (SD-1.x/2.x and SDXL have only one)."""
        return self.segments[0].input_ids

    @property
    def eot_index(self) -> torch.Tensor:
        """First [EoT] of the first segment, as a position in `hidden`."""
        return self.segments[0].start + self.segments[0].eot_index


@dataclass
class Conditioning:
    """Everything the denoiser needs besides latents and t, batched along dim 0."""

    hidden: torch.Tensor  # [B, L, D] encoder_hidden_states (the text tokens)
    pooled: torch.Tensor | None = None  # [B, P] (SDXL, SD3, FLUX)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, ...] each, e.g. FLUX-dev's "guidance"

    def _map(self, fn) -> Conditioning:
        return Conditioning(
            fn(self.hidden),
            None if self.pooled is None else fn(self.pooled),
            {k: fn(v) for k, v in self.extra.items()},
        )

    def to(self, device=None, dtype=None) -> Conditioning:
        return self._map(lambda x: x.to(device=device, dtype=dtype if x.is_floating_point() else None))

    def __getitem__(self, idx) -> Conditioning:
        return self._map(lambda x: x[idx])

    def __len__(self) -> int:
        return self.hidden.shape[0]

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        first = parts[0]
        return Conditioning(
            torch.cat([p.hidden for p in parts]),
            None if first.pooled is None else torch.cat([p.pooled for p in parts]),
            {k: torch.cat([p.extra[k] for p in parts]) for k in first.extra},
        )


class DiffusionAdapter(ABC):
    """One model family behind one interface. Construct with a loaded diffusers pipeline."""

    family: ClassVar[str]  # "sd", "sdxl", "sd3", "flux"
    pipeline_classes: ClassVar[tuple[str, ...]]  # diffusers pipeline class names this adapter handles
    stream_names: ClassVar[tuple[str, ...]]  # text streams by index, e.g. ("clip", "pooled")
    default_token_roles: ClassVar[dict[str, tuple[str, ...]]]  # per token segment, e.g. {"clip": ("eot",)}
    default_pooled_edit: ClassVar[bool] = False  # stage 1 edits the pooled path unless told otherwise
    default_edit_blocks: ClassVar[str] = "all"  # which blocks' edit targets stage 1 uses by default
    singular_hints: ClassVar[dict[int, str]] = {}  # why a stream's stage-1 system is singular by construction
    default_train_blocks: ClassVar[str] = "all"  # stage 2 by default ("all", "encoder", or e.g. FLUX's "double")
    sampling_scheduler_class: ClassVar[str | None] = None  # stage 2's trajectories: None = the pipeline's own

    def __init__(self, pipe):
        self.pipe = pipe

    @classmethod
    def matches(cls, pipe) -> bool:
        """Whether this adapter handles `pipe`."""
        return type(pipe).__name__ in cls.pipeline_classes

    @property
    @abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The UNet or transformer; its parameter names are the names deltas use."""

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def tokenizer(self):
        """The CLIP tokenizer of the first text encoder (roles on other segments use `TokenSegment.tokenizer`)."""
        return self.pipe.tokenizer

    @property
    def prediction_type(self) -> PredictionType:
        """What `predict_noise` returns: "epsilon", "v_prediction" or "flow"."""
        return self.pipe.scheduler.config.get("prediction_type", "epsilon")

    def num_text_streams(self) -> int:
        return len(self.stream_names)

    def segment_names(self) -> tuple[str, ...]:
        """Token segments that token roles can name (e.g. ("clip", "t5") for SD3)."""
        return tuple(self.default_token_roles)

    @abstractmethod
    def encode_text(self, prompts: list[str], stream: int = 0) -> TextEmbeddings:
        """What the edit targets of `stream` read for `prompts`, padded to the model's fixed lengths."""

    @abstractmethod
    def edit_targets(self, pooled: bool | None = None, blocks: Blocks = "default") -> dict[str, int]:
        """Stage-1 weight names (denoiser parameter names) mapped to the text stream each one reads.

        Args:
            pooled: also edit the pooled-text projection (None: the family's `default_pooled_edit`).
            blocks: "default" (the family's `default_edit_blocks`), "encoder" (UNet down blocks only) or "all".
        """

    def edit_columns(self, name: str) -> slice:
        """The input columns of edit target `name` that read its text stream (W[:, cols]' = W[:, cols] @ M)."""
        return slice(None)

    @abstractmethod
    def trainable_parameter_names(self, kind: ParamKind, blocks: Blocks = "default") -> list[str]:
        """Stage-2 parameter sets.

        Args:
            kind: "visual" (the image-side attention: self-attention + cross-attention to_q in UNets, the image
                stream's to_q/k/v/to_out in DiTs) or "kv" (what reads text: cross-attention to_k/to_v, or the text
                stream's add_k_proj/add_v_proj).
            blocks: "default" (the family's `default_train_blocks`), "encoder" (UNet down blocks only) or "all"
                (FLUX: also the single-stream blocks, which mix text and image).
        """

    @abstractmethod
    def condition(self, prompts: list[str]) -> Conditioning:
        """Conditioning for `predict_noise`; "" gives the pipeline's unconditional branch."""

    @abstractmethod
    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's native prediction (see `prediction_type`) for unpacked latents [B, C, H, W] at t [B]."""

    @abstractmethod
    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(channels, h, w) of one unpacked latent at the given image size (default: the pipeline's default size)."""

    def sampling_scheduler(self, steps: int, latent_shape: tuple[int, int, int]):
        """A fresh scheduler with `steps` timesteps set, as the pipeline sets them, for stage 2's cached trajectories.

        `sampling_scheduler_class` None is the pipeline's own scheduler (SDXL: DDIM or Euler, as shipped); SD-1.x/2.x
        name DDIM (the paper samples with it). Flow-matching families override this to pass the pipeline's sigmas.
        """
        import diffusers

        cls = getattr(diffusers, self.sampling_scheduler_class or type(self.pipe.scheduler).__name__)
        scheduler = cls.from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        return scheduler

    def generation_kwargs(self, guidance: float, n_prompts: int = 1) -> dict:
        """Keyword arguments of a pipeline call on `n_prompts` prompts that generates with guidance `guidance`."""
        return {"guidance_scale": float(guidance)}

    def resolve_blocks(self, blocks: Blocks, default: str) -> str:
        if blocks not in ("default", "encoder", "all"):
            raise TRCEError(f"blocks must be default, encoder or all; got {blocks!r}")
        return default if blocks == "default" else blocks

    def lora_target_modules(self, kind: ParamKind, blocks: Blocks = "default") -> list[str]:
        """Module names (without `.weight`) of the chosen set, for peft LoRA.

        Raises:
            TRCEError: LoRA cannot be used here (the pipeline cannot load LoRA weights, or the set has no Linear).
        """
        if not hasattr(self.pipe, "load_lora_weights"):
            raise TRCEError(
                f"{type(self.pipe).__name__} cannot load LoRA weights (diffusers has no LoRA loader for it), so a "
                "LoRA result could not be used; train the full parameter set instead (train.lora: false)"
            )
        names = self.trainable_parameter_names(kind, blocks)
        modules = sorted({n.rsplit(".", 1)[0] for n in names if n.endswith(".weight")})
        if not modules:
            raise TRCEError(f"the {self.family} '{kind}' set with blocks={blocks} has no Linear layer to put LoRA on")
        return modules
