"""Stage 2, Denoising Trajectory Steering (paper Sec. 4.2, appendix A.3): the trajectory cache and the fine-tuning run.

Defaults are the paper's (50 DDIM steps, first half for erasure, beta 15, lambda 100, margin 0.01, Adam 1e-6,
3 epochs, 100 malicious trajectories) except where a field says otherwise and why.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from .base import Section, at_least_one, non_negative, positive, probability


class CacheConfig(Section):
    steps: int = 50  # DDIM steps of the original model's sampling (paper: 50)
    keep_fraction: float = 0.5  # erase draws take t from the first this-fraction of the steps (paper: first 25 of 50)
    guidance: float = 7.5  # classifier-free guidance of the cached malicious trajectories
    malicious_samples: int = 100  # trajectories on malicious prompts (paper: 100 sexual / 300 multi-concept)
    mode: Literal["planned", "paper"] = "planned"  # planned: sample only what training draws; paper: full counts
    unconditional_samples: int = 2000  # unconditional trajectories in "paper" mode (paper: 2000, all 50 steps)
    draws_per_trajectory: int = 4  # "planned" mode: preservation draws that share one unconditional trajectory
    store_dtype: Literal["float32", "float16"] = "float32"  # float16 halves the cache; targets lose ~3 digits
    root: str = "trce-cache"  # folder that holds caches, one subfolder per content hash (shared by all nodes)
    shard_size: int = 16  # trajectories per parquet shard: the unit of resume
    batch_size: int = 8  # trajectories per denoiser batch inside a shard
    num_actors: int = 1  # Ray Data actors, each holding one copy of the original pipeline
    num_gpus: float = 0.0  # GPUs per actor (1 on a GPU cluster; 0 on CPU)
    num_cpus: float = 1.0  # CPUs per actor
    height: int | None = None  # image size of cached trajectories (default: the model's native size)
    width: int | None = None

    _positive = field_validator(
        "steps",
        "malicious_samples",
        "unconditional_samples",
        "draws_per_trajectory",
        "shard_size",
        "batch_size",
        "num_actors",
    )(at_least_one)

    _fraction = field_validator("keep_fraction")(probability)

    _non_negative = field_validator("num_gpus", "num_cpus")(non_negative)

    @property
    def erase_steps(self) -> int:
        """How many leading sampling steps erase draws may use (25 of 50 in the paper)."""
        return max(1, round(self.steps * self.keep_fraction))


ABLATIONS = ("preserve_loss", "erase_contrast", "guidance_enhance")  # TrainConfig's Table 5 switches


class TrainConfig(Section):
    beta: float = 15.0  # guidance enhancement scale of f_safe / f_unsafe (Eq. 6/7)
    margin: float = 0.01  # triplet margin (Eq. 8), on per-element mean squared distances as in the authors' code
    lam: float = 100.0  # weight of L_preserve (Eq. 9)
    # Paper Table 5's ablations (trce_ray/stage2/loss.py), all on by default:
    preserve_loss: bool = True  # false: no L_preserve in the total (still computed and reported)
    erase_contrast: bool = True  # false: L_erase only pulls toward f_safe (no unsafe term of the triplet, no margin)
    guidance_enhance: bool = True  # false: f_safe/f_unsafe are the plain conditional predictions (beta = 1)
    lr: float = 1e-6  # Adam learning rate
    epochs: int = 3  # passes over the malicious trajectories
    batch_size: int = 1  # malicious draws per step, summed over workers (authors' code: 1)
    preserve_per_sample: int = 1  # unconditional draws per malicious draw (authors' code: 4; 1 keeps 3 passes/sample)
    grad_accum: int = 1  # steps whose gradients add up before one optimizer update
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute
    params: Literal["visual", "kv"] = "visual"  # visual: self-attn + cross-attn to_q (paper); kv: celebrities (App. E)
    blocks: Literal["default", "encoder", "all"] = "default"  # which blocks of the set: the family's default, UNet
    # down blocks only, or all (FLUX: also the single-stream blocks, which mix text and image)
    lora_rank: int | None = None  # LoRA of this rank on the chosen set instead of full fine-tuning (SDXL, DiT)
    lora_alpha: float | None = None  # LoRA scale numerator (default: the rank, i.e. scale 1)
    backend: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: Literal[1, 2, 3] = 1  # DeepSpeed ZeRO stage (3 partitions the weights too: a full FLUX visual set)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # GPU only: frozen weights and compute in this dtype,
    # trained weights and optimizer in fp32 (DDP: bf16 autocast; DeepSpeed: its bf16/fp16 engine with loss scaling)
    num_workers: int = 1  # Ray Train workers (data parallel); 0 = Ray Train local mode, in this process (debugging)
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    cpus_per_worker: float = 1.0
    checkpoint_every: int = 50  # steps between checkpoints (and always at the end)
    max_failures: int = 0  # worker-group restarts from the latest checkpoint before giving up
    max_steps: int | None = None  # stop after this many steps (smoke runs); None = all epochs
    storage: str | None = None  # Ray Train checkpoint folder, shared by all nodes (NFS); None: beside the output

    _positive = field_validator(
        "epochs", "batch_size", "preserve_per_sample", "grad_accum", "checkpoint_every", "lora_rank", "max_steps"
    )(at_least_one)

    _lr = field_validator("lr", "beta")(positive)

    _non_negative = field_validator("margin", "lam", "cpus_per_worker", "num_workers", "max_failures")(non_negative)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        """`precision: fp32|bf16|fp16` (before `mixed_precision`) still reads."""
        if isinstance(data, dict) and "precision" in data:
            data = dict(data)
            old = data.pop("precision")
            data.setdefault("mixed_precision", "no" if old == "fp32" else old)
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.batch_size % max(1, self.num_workers):
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_workers ({self.num_workers}) so every "
                "worker gets the same share of each step"
            )
        if self.backend == "ddp" and self.mixed_precision == "fp16":
            raise ValueError("fp16 needs loss scaling: use backend: deepspeed, or mixed_precision: bf16 with DDP")
        if self.num_workers == 0 and self.backend == "deepspeed":
            raise ValueError("DeepSpeed needs Ray Train workers (num_workers >= 1)")
        return self
