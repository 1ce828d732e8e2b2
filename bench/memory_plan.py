"""Stage-2 memory and throughput plan for SDXL-base-1.0, SD3-medium, SD3.5-large and FLUX.1-dev, with no GPU and no
weights: the published denoiser configs are instantiated on PyTorch's meta device.

What it prints:
  1. parameter totals (against the published figures), and the stage-1 / stage-2 parameter sets, counted with
     regexes over the meta model's parameter names;
  2. activation memory of one stage-2 training step (forward + backward of the loss's 2 + R rows): MEASURED on the
     tiny model of each family (`trce_ray.models.tiny`) on CPU with a live-storage tracker, then scaled to the
     published config by replaying the same step on the meta device (method below), with and without gradient
     checkpointing;
  3. per-GPU memory for DDP fp32, DeepSpeed ZeRO-2 bf16, ZeRO-3 bf16 and LoRA r=16 on 1-8 GPUs, and the smallest
     setting that fits 80 GB and 141 GB GPUs; training FLOPs per step.

    OMP_NUM_THREADS=1 python bench/memory_plan.py                      # all, 1024 px (4-12 min on 2 shared cores)
    OMP_NUM_THREADS=1 python bench/memory_plan.py --markdown           # the tables in docs/benchmarks.md form
    OMP_NUM_THREADS=1 python bench/memory_plan.py --resolution 512 --preserve 4

Activation scaling method. The tracker (`stage2_step.PeakMemory`, a dispatch mode that counts every live tensor
storage, i.e. what CUDA's `max_memory_allocated` counts) measures the tiny step on CPU. The same step is then run
on the meta device, where tensors have shapes and dtypes but no data: autograd saves exactly the same tensors, so
the tracker's peak on the meta replay of the tiny model must equal the CPU measurement (the script checks it, to
the byte), and the replay at the published config's shapes is the measured step scaled by the config - per block
type, token count, width, depth and batch rows exactly, with no proportionality law assumed. One substitution: on
meta, SDPA would pick the math kernel and save the [L, L] attention matrix, which no GPU kernel does; meta SDPA is
routed to the CPU flash kernel, which (like CUDA's flash and memory-efficient kernels) saves only the output and
the log-sum-exp. Not captured: CUDA allocator rounding/fragmentation, kernel workspaces, the CUDA context and NCCL
buffers - hence the planning headroom (`--headroom`, default 10 %).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import re
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from stage2_step import PeakMemory
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from trce_ray.config import TrainConfig
from trce_ray.stage2.loss import stage2_loss

GIB = 2**30

# ---------------------------------------------------------------------------------------------------------------
# Published denoiser configs: the released config.json, less keys equal to the diffusers defaults.
# ---------------------------------------------------------------------------------------------------------------
CONFIGS = {
    # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json. Read from public verbatim copies: GitHub
    # PRITHIVSAKTHIUR/AI-Art-Generator-SDXL and DeveloperRadleighPompei/sdxl, file unet/config.json (identical).
    "sdxl": {
        "class": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    },
    # stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json (gated on the Hub). Values from verbatim
    # copies in public code (ten found, all identical; the search index does not name their repositories), checked by
    # the parameter total below.
    "sd3-medium": {
        "class": "SD3Transformer2DModel",
        "attention_head_dim": 64,
        "caption_projection_dim": 1536,
        "in_channels": 16,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 24,
        "out_channels": 16,
        "patch_size": 2,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "sample_size": 128,
    },
    # stabilityai/stable-diffusion-3.5-large, transformer/config.json (gated). Nine verbatim copies in public code
    # agree (unattributed, as above), one noting "derived from the checkpoint: ... context_embedder maps 4096->2432";
    # no dual_attention_layers (those are SD3.5-medium's), qk_norm rms_norm.
    "sd3.5-large": {
        "class": "SD3Transformer2DModel",
        "attention_head_dim": 64,
        "caption_projection_dim": 2432,
        "in_channels": 16,
        "joint_attention_dim": 4096,
        "num_attention_heads": 38,
        "num_layers": 38,
        "out_channels": 16,
        "patch_size": 2,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "qk_norm": "rms_norm",
        "sample_size": 128,
    },
    # black-forest-labs/FLUX.1-dev, transformer/config.json (gated). Verbatim copy in GitHub Eco-Sphere/FLUX.1-dev
    # README.md (its "flux-dev/transformer" config, plus an `is_tp` key of theirs); axes_dims_rope is the
    # diffusers default (16, 56, 56), as in the FLUX.1-schnell copy in edkamesh/FluX-optimized.
    "flux-dev": {
        "class": "FluxTransformer2DModel",
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 19,
        "num_single_layers": 38,
        "patch_size": 1,
        "pooled_projection_dim": 768,
    },
}

# Published parameter totals of the denoisers, to check the configs above.
KNOWN_TOTALS = {
    "sdxl": (2.57e9, "SDXL UNet 2.57B (diffusers/benchmarks table; SDXL paper: 2.6B)"),
    "sd3-medium": (2.0e9, "SD3-medium MMDiT 2B (model card)"),
    "sd3.5-large": (8.1e9, "SD3.5-large MMDiT 8.1B (Stability AI)"),
    "flux-dev": (11.9e9, "FLUX.1-dev transformer 11.9B (diffusers/benchmarks table; BFL: '12 billion')"),
}

TINY_FAMILY = {"sdxl": "sdxl", "sd3-medium": "sd3", "sd3.5-large": "sd3", "flux-dev": "flux"}
# Code-path switches of the published config that the tiny builder leaves at their defaults: the tiny variant the
# step is measured on takes them, so the measured and the replayed step run the same code.
CODE_PATH_KEYS = ("qk_norm", "guidance_embeds")
TEXT_TOKENS = {  # tokens the denoiser reads per prompt
    "sdxl": 77,  # CLIP-L + bigG, concatenated along features
    "sd3-medium": 77 + 256,  # CLIP (77) + T5 (pipeline default max_sequence_length 256), along the sequence
    "sd3.5-large": 77 + 256,
    "flux-dev": 512,  # T5, max_sequence_length 512 for dev
}


def build(key: str, device: str | torch.device = "meta", **overrides) -> torch.nn.Module:
    """The denoiser of a published config (`CONFIGS[key]`) with empty (meta) or random weights."""
    import diffusers

    cfg = {k: v for k, v in CONFIGS[key].items() if k != "class"} | overrides
    with torch.device(device):
        return getattr(diffusers, CONFIGS[key]["class"])(**cfg)


def tiny_denoiser(key: str) -> torch.nn.Module:
    """The tiny model of `key`'s family, with the published config's code-path switches (qk_norm, guidance)."""
    from trce_ray.models.tiny import tiny_pipeline

    pipe = tiny_pipeline(TINY_FAMILY[key])
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    switches = {k: CONFIGS[key][k] for k in CODE_PATH_KEYS if k in CONFIGS[key]}
    if any(den.config.get(k) != v for k, v in switches.items()):
        torch.manual_seed(0)
        den = type(den).from_config({**den.config, **switches})
    return den


# ---------------------------------------------------------------------------------------------------------------
# Parameter sets: regexes over parameter names.
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSet:
    """A set of denoiser parameters: names matching `pattern` inside `scope` (both regexes, `re.search`)."""

    stage: int
    name: str
    pattern: str
    scope: str = ""  # "" = all blocks
    scope_name: str = "all blocks"
    columns: int | None = None  # count only the first `columns` input columns of each matched weight
    note: str = ""


ATTN = r"(to_q|to_k|to_v|to_out\.0)"
SDXL_SCOPES = (("", "all blocks"), (r"^down_blocks\.", "UNet encoder (down_blocks)"))


def param_sets(key: str, config) -> list[ParamSet]:
    """Stage-1 edited matrices and stage-2 trainable sets of one family (issue 9's choices)."""
    if key == "sdxl":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        sets = []
        for scope, scope_name in SDXL_SCOPES:
            sets += [
                ParamSet(1, "attn2.to_k/to_v", r"\.attn2\.to_[kv]\.weight$", scope, scope_name),
                ParamSet(
                    2,
                    "visual: attn1 + attn2.to_q",
                    rf"\.attn1\.{ATTN}\.(weight|bias)$|\.attn2\.to_q\.(weight|bias)$",
                    scope,
                    scope_name,
                ),
                ParamSet(2, "kv: attn2.to_k/to_v", r"\.attn2\.to_[kv]\.(weight|bias)$", scope, scope_name),
            ]
        mid = (r"^(down_blocks|mid_block)\.", "encoder + mid_block")
        sets.append(ParamSet(1, "attn2.to_k/to_v", r"\.attn2\.to_[kv]\.weight$", *mid))
        sets.append(
            ParamSet(
                1,
                "pooled text columns of add_embedding.linear_1",
                r"^add_embedding\.linear_1\.weight$",
                columns=pooled,
                note=f"first {pooled} input columns (bigG pooled), option",
            )
        )
        return sets
    sets = [
        ParamSet(1, "context_embedder", r"^context_embedder\.weight$"),
        ParamSet(
            1, "pooled: time_text_embed.text_embedder.linear_1", r"^time_text_embed\.text_embedder\.linear_1\.weight$"
        ),
        ParamSet(
            2,
            "visual: image-stream attn.to_q/k/v/to_out",
            rf"^transformer_blocks\.\d+\.attn\.{ATTN}\.(weight|bias)$",
            scope_name="double-stream" if key == "flux-dev" else "all blocks",
        ),
        ParamSet(
            2,
            "kv analogue: text-stream attn.add_k_proj/add_v_proj",
            r"^transformer_blocks\.\d+\.attn\.add_[kv]_proj\.(weight|bias)$",
        ),
    ]
    if key == "flux-dev":
        single = r"^single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)\.(weight|bias)$"
        sets.insert(
            3,
            ParamSet(
                2,
                "visual+single: + single-stream attn.to_q/k/v",
                rf"{sets[2].pattern}|{single}",
                scope_name="double + single",
                note="single blocks mix text and image: on request",
            ),
        )
    return sets


def _matches(ps: ParamSet, name: str) -> bool:
    return bool(re.search(ps.pattern, name)) and (not ps.scope or bool(re.search(ps.scope, name)))


def count(model: torch.nn.Module, ps: ParamSet) -> tuple[int, int]:
    """(tensors, parameters) of `model` in the set."""
    tensors = params = 0
    for name, p in model.named_parameters():
        if _matches(ps, name):
            tensors += 1
            params += p.shape[0] * ps.columns if ps.columns else p.numel()
    return tensors, params


def lora_targets(model: torch.nn.Module, ps: ParamSet) -> list[str]:
    """Names of the Linear modules whose weight is in the set: what LoRA wraps."""
    modules = dict(model.named_modules())
    names = [
        n.removesuffix(".weight") for n, _ in model.named_parameters() if n.endswith(".weight") and _matches(ps, n)
    ]
    return [n for n in names if isinstance(modules[n], torch.nn.Linear)]


def lora_param_count(model: torch.nn.Module, ps: ParamSet, rank: int) -> int:
    """LoRA parameters for the set: r * (in + out) per wrapped Linear (A: r x in, B: out x r, no bias)."""
    modules = dict(model.named_modules())
    return sum(rank * (modules[n].in_features + modules[n].out_features) for n in lora_targets(model, ps))


def total_params(model: torch.nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers())


# ---------------------------------------------------------------------------------------------------------------
# Per-GPU memory of stage 2 (model states), by the ZeRO paper's accounting (Rajbhandari et al. 2020, Sec. 3.1).
# ---------------------------------------------------------------------------------------------------------------
SETTINGS = ("ddp-fp32", "zero2-bf16", "zero3-bf16", "lora-r16")
SETTING_NAMES = {
    "ddp-fp32": "DDP fp32, full visual set",
    "zero2-bf16": "ZeRO-2 bf16, full visual set",
    "zero3-bf16": "ZeRO-3 bf16, full visual set",
    "lora-r16": "LoRA r=16 (bf16 base, fp32 LoRA), DDP",
}
# DeepSpeed 0.19 defaults (deepspeed/runtime/zero/config.py): what a ds_config without overrides allocates.
DS_REDUCE_BUCKET = int(5e8)  # elements; one gradient bucket in the gradient dtype (bf16), ZeRO-2 and ZeRO-3
DS_MAX_LIVE = int(1e9)  # stage3_max_live_parameters: gathered bf16 parameters resident at once (upper bound)
DS_PREFETCH = int(5e7)  # stage3_prefetch_bucket_size
DS_PERSISTENCE = int(1e5)  # stage3_param_persistence_threshold: smaller params are never partitioned


def stage2_memory(
    setting: str,
    n_gpus: int,
    params: int,
    buffers: int,
    trainable: int,
    activations: int = 0,
    persistent: int = 0,
) -> dict[str, float]:
    """Per-GPU bytes of stage 2 by component, and the peak.

    Bytes per parameter (P = whole denoiser, T = trainable: the visual set, or the LoRA tensors; N = GPUs):
      ddp-fp32   weights 4P (frozen and trainable, replicated); grads 4T; Adam m, v 8T (fp32 weights are their
                 own master copy); DDP gradient buckets 4T when N > 1 (torch DDP keeps grads and buckets apart
                 unless gradient_as_bucket_view=True, and Ray's prepare_model keeps the default); the foreach AdamW
                 step allocates one more 4T temporary (sqrt of v).
      zero2-bf16 weights 2P replicated; bf16 grads 2T/N and fp32 master + m + v 12T/N (ZeRO-2 partitions grads and
                 optimizer state); one reduce bucket; at the step the grad partition is upcast to fp32 (4T/N).
      zero3-bf16 as ZeRO-2, and the weights 2P/N too (ZeRO-3 partitions parameters, frozen ones included); while
                 layers run, gathered parameters (<= stage3_max_live_parameters + prefetch bucket, bf16) and the
                 never-partitioned small parameters (`persistent`, < 1e5 elements each) are resident.
      lora-r16   frozen base 2P; LoRA weights, grads, Adam m, v in fp32 (diffusers' recipe: only LoRA params fp32)
                 = 16T; DDP buckets 4T when N > 1; step temporary 4T.
    Buffers (e.g. SD3's position table) are stored in the training dtype. Activations and the step temporary are
    never resident together (activations are freed by the end of backward): peak = static + max(activations +
    gathered parameters, step temporary).
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1; got {n_gpus}")
    n, frozen = n_gpus, params - trainable
    gathered = 0
    if setting in ("ddp-fp32", "lora-r16"):  # torch DDP + AdamW, trainable tensors in fp32 in both
        base = 4 * (frozen + buffers) if setting == "ddp-fp32" else 2 * (params + buffers)  # LoRA adds tensors
        parts = dict(
            frozen_weights=base,
            trainable_weights=4 * trainable,
            grads=4 * trainable,
            optimizer=8 * trainable,
            buffers=4 * trainable if n > 1 else 0,  # DDP gradient buckets
        )
        step = 4 * trainable
    else:
        shard = n if setting == "zero3-bf16" else 1
        parts = dict(
            frozen_weights=2 * (frozen + buffers) / shard,
            trainable_weights=2 * trainable / shard,
            grads=2 * trainable / n,
            optimizer=12 * trainable / n,
            buffers=2 * DS_REDUCE_BUCKET,
        )
        step = 4 * trainable / n
        if setting == "zero3-bf16":
            gathered = 2 * (min(DS_MAX_LIVE, params) + DS_PREFETCH + persistent)
    static = sum(parts.values())
    return parts | dict(
        activations=activations,
        gathered=gathered,
        step_temporary=step,
        total=static + max(activations + gathered, step),
    )


def persistent_params(model: torch.nn.Module) -> int:
    """Parameters that ZeRO-3 never partitions (each below stage3_param_persistence_threshold)."""
    return sum(p.numel() for p in model.parameters() if p.numel() < DS_PERSISTENCE)


# ---------------------------------------------------------------------------------------------------------------
# One stage-2 training step: measured on the tiny model, replayed at the published config's shapes on meta.
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepShape:
    draws: int  # erase draws per GPU; each brings 2 rows (c_m and empty) and R preservation rows
    preserve: int  # R
    latent: int  # latent height = width
    text_tokens: int

    @property
    def rows(self) -> int:
        return self.draws * (2 + self.preserve)


def step_inputs(model: torch.nn.Module, shape: StepShape, device, dtype, seed: int = 0) -> dict:
    """Denoiser keyword arguments for one batch of `shape` (random values; shapes as the pipelines pass them)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)

    def rand(*size):
        t = torch.empty(size, device=device, dtype=dtype)
        return t if t.device.type == "meta" else t.copy_(torch.randn(size, generator=g))

    r, h, tokens = shape.rows, shape.latent, shape.text_tokens
    t = rand(r).abs()
    name = type(model).__name__
    if name == "UNet2DConditionModel":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        return dict(
            sample=rand(r, cfg.in_channels, h, h),
            timestep=t * 999,
            encoder_hidden_states=rand(r, tokens, cfg.cross_attention_dim),
            added_cond_kwargs={"text_embeds": rand(r, pooled), "time_ids": rand(r, 6)},
        )
    kw = dict(
        encoder_hidden_states=rand(r, tokens, cfg.joint_attention_dim),
        pooled_projections=rand(r, cfg.pooled_projection_dim),
    )
    if name == "SD3Transformer2DModel":
        return kw | dict(hidden_states=rand(r, cfg.in_channels, h, h), timestep=t * 999)
    img = (h // 2) ** 2  # FLUX packs 2x2 latent patches into tokens
    kw |= dict(
        hidden_states=rand(r, img, cfg.in_channels),
        timestep=t.clamp(max=1),
        img_ids=torch.zeros(img, 3, device=device, dtype=dtype),
        txt_ids=torch.zeros(tokens, 3, device=device, dtype=dtype),
    )
    if cfg.guidance_embeds:
        kw["guidance"] = torch.full((r,), 3.5, device=device, dtype=dtype)
    return kw


MODES = ("fp32", "bf16", "lora-bf16")  # full set in fp32 (DDP), full set in bf16 (DeepSpeed), bf16 base + fp32 LoRA


def prepare(model: torch.nn.Module, ps: ParamSet, mode: str, rank: int = 16) -> torch.nn.Module:
    """Freeze the model except the set (or LoRA on it), in the mode's dtypes."""
    model.requires_grad_(False)
    if mode == "fp32":
        model.float()
    else:
        model.to(torch.bfloat16)
    if mode == "lora-bf16":
        from peft import LoraConfig

        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=lora_targets(model, ps)))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    else:
        for name, p in model.named_parameters():
            if _matches(ps, name):
                p.requires_grad_(True)
    return model


_SDPA = F.scaled_dot_product_attention


def _sdpa_flash_on_meta(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """On meta, SDPA would take the math path (saving [L, L] scores); take the CPU flash kernel's meta instead."""
    if query.device.type != "meta" or attn_mask is not None:
        return _SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return op(query, key, value, dropout_p, is_causal, scale=scale)[0]


@contextlib.contextmanager
def _flash_sdpa():
    F.scaled_dot_product_attention = _sdpa_flash_on_meta
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _SDPA


def _run_step(model: torch.nn.Module, shape: StepShape, checkpointing: bool):
    """Forward + stage-2 loss + backward, as `cached_draws_loss` does it (rows: erase-cond | erase-empty | keep)."""
    p = next(model.parameters())
    if checkpointing:  # diffusers' own setting (use_reentrant=False); no dropout, so no RNG state to keep
        model.enable_gradient_checkpointing(
            functools.partial(checkpoint, use_reentrant=False, preserve_rng_state=False)
        )
    kwargs = step_inputs(model, shape, p.device, torch.bfloat16 if p.dtype == torch.bfloat16 else torch.float32)
    pred = model(**kwargs, return_dict=False)[0].float()
    b = shape.draws
    targets = [torch.zeros_like(pred[:b]) for _ in range(3)]
    t = TrainConfig()
    loss = stage2_loss(
        pred[:b],
        pred[b : 2 * b],
        pred[2 * b :],
        dict(zip(("eps_uncond", "eps_cond", "eps_safe"), targets)),
        {"eps_uncond": torch.zeros_like(pred[2 * b :])},
        t.beta,
        t.margin,
        t.lam,
    )
    loss.total.backward()


def step_peak(model: torch.nn.Module, shape: StepShape, checkpointing: bool) -> int:
    """Peak bytes of tensors created by one training step, over the resident weights and gradients.

    Gradients are allocated before the step (as after the first step of a loop that zeroes them in place), so the
    peak is activations + temporaries only; weights, grads and optimizer state are accounted by `stage2_memory`.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.zeros_like(p)
    grads = torch.optim.SGD(trainable, lr=0.0)  # a holder: PeakMemory counts an optimizer's grads as resident
    with _flash_sdpa(), PeakMemory(model, grads) as tracker:
        resident = tracker.current
        _run_step(model, shape, checkpointing)
    return tracker.peak - resident


def step_flops(model: torch.nn.Module, shape: StepShape, checkpointing: bool) -> int:
    """FLOPs of one training step (forward, backward and any checkpoint recomputation), counted on meta."""
    with FlopCounterMode(display=False) as counter:
        _run_step(model, shape, checkpointing)
    return counter.get_total_flops()


def calibrate(key: str, ps_name: str, mode: str, checkpointing: bool, shape: StepShape) -> tuple[int, int]:
    """(measured on CPU, replayed on meta) peak bytes of the tiny model's step: must be equal."""
    tiny = tiny_denoiser(key)
    ps = next(p for p in param_sets(key, tiny.config) if p.name == ps_name and p.stage == 2)
    measured = step_peak(prepare(copy.deepcopy(tiny), ps, mode), shape, checkpointing)
    replayed = step_peak(prepare(copy.deepcopy(tiny).to("meta"), ps, mode), shape, checkpointing)
    return measured, replayed


# ---------------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------------
GPUS = {"80 GB": 81559 * 2**20, "141 GB": 143771 * 2**20}  # nvidia-smi totals of H100 80GB and H200
# The stage-2 sets the plan is made for (family, stage-2 set name, scope name).
PLAN_SETS = (
    ("sdxl", "visual: attn1 + attn2.to_q", "all blocks"),
    ("sdxl", "visual: attn1 + attn2.to_q", "UNet encoder (down_blocks)"),
    ("sd3-medium", "visual: image-stream attn.to_q/k/v/to_out", "all blocks"),
    ("sd3.5-large", "visual: image-stream attn.to_q/k/v/to_out", "all blocks"),
    ("flux-dev", "visual: image-stream attn.to_q/k/v/to_out", "double-stream"),
    ("flux-dev", "visual+single: + single-stream attn.to_q/k/v", "double + single"),
)
SETTING_MODE = {"ddp-fp32": "fp32", "zero2-bf16": "bf16", "zero3-bf16": "bf16", "lora-r16": "lora-bf16"}


def find_set(key: str, config, name: str, scope_name: str) -> ParamSet:
    return next(p for p in param_sets(key, config) if p.name == name and p.scope_name == scope_name)


def plan(args) -> dict:
    """Counts, calibration, replays and the memory table; returns everything the printers need."""
    out = {"counts": {}, "totals": {}, "calibration": [], "plan": []}
    for key in args.models:
        model = build(key)
        out["totals"][key] = total_params(model)
        out["counts"][key] = [
            (ps, *count(model, ps), lora_param_count(model, ps, args.rank)) for ps in param_sets(key, model.config)
        ]

    for key, name, scope in PLAN_SETS:
        if scope not in ("all blocks", "double-stream") or key not in args.models:
            continue  # one calibration per model: the measured step of its main set
        shape = StepShape(1, 1, 16, TEXT_TOKENS[key])
        for mode in MODES:
            for ckpt in (False, True):
                t0 = time.perf_counter()
                measured, replayed = calibrate(key, name, mode, ckpt, shape)
                out["calibration"].append((key, mode, ckpt, measured, replayed, time.perf_counter() - t0))
    for key, name, scope in PLAN_SETS:
        if key not in args.models:
            continue
        shape = StepShape(args.batch, args.preserve, args.resolution // 8, TEXT_TOKENS[key])
        meta = build(key)
        ps = find_set(key, meta.config, name, scope)
        params, buffers = total_params(meta)
        acts, flops = {}, {}
        for mode in MODES:
            for ckpt in (False, True):
                acts[mode, ckpt] = step_peak(prepare(build(key), ps, mode, args.rank), shape, ckpt)
            if mode == "bf16":
                for ckpt in (False, True):
                    flops[ckpt] = step_flops(prepare(build(key), ps, mode), shape, ckpt)
        entry = dict(
            key=key, ps=ps, draws=args.batch, params=params, buffers=buffers, activations=acts, flops=flops, memory={}
        )
        full, lora = count(meta, ps)[1], lora_param_count(meta, ps, args.rank)
        for setting in SETTINGS:
            trainable = lora if setting == "lora-r16" else full
            for ckpt in (False, True):
                for n in range(1, 9):
                    entry["memory"][setting, ckpt, n] = stage2_memory(
                        setting,
                        n,
                        params,
                        buffers,
                        trainable,
                        acts[SETTING_MODE[setting], ckpt],
                        persistent_params(meta),
                    )
        out["plan"].append(entry)
    return out


def smallest_fit(entry: dict, usable: float) -> dict:
    """Per setting: the fewest GPUs that fit, preferring no checkpointing at equal GPU count (it is faster)."""
    best = {}
    for setting in SETTINGS:
        for n in range(1, 9):
            fits = [ck for ck in (False, True) if entry["memory"][setting, ck, n]["total"] <= usable]
            if fits:
                best[setting] = (n, fits[0])
                break
    return best


def max_draws(entry: dict, setting: str, checkpointing: bool, n_gpus: int, usable: float) -> int:
    """Erase draws per GPU that fit: activations grow linearly with the draws (replays at 1, 2 and 4 draws of FLUX
    and SDXL gave 2.000x and 4.000x), everything else does not depend on them."""
    m = entry["memory"][setting, checkpointing, n_gpus]
    static = m["total"] - max(m["activations"] + m["gathered"], m["step_temporary"])
    if static + m["step_temporary"] > usable:
        return 0
    per_draw = m["activations"] / entry["draws"]
    return max(0, int((usable - static - m["gathered"]) // per_draw))


def _gib(x: float) -> str:
    return f"{x / GIB:.1f}"


def _label(e: dict) -> str:
    return f"{e['key']}, {e['ps'].name.split(':')[0]} ({e['ps'].scope_name})"


def print_report(res: dict, args) -> None:
    usable = {g: c * (1 - args.headroom) for g, c in GPUS.items()}
    print(
        f"Stage 2 at {args.resolution} px, {args.batch} erase draw(s) x (2 + R = {args.preserve}) rows per GPU and "
        f"step; torch {torch.__version__}, {torch.get_num_threads()} thread(s).\n"
    )
    print("Denoiser totals on the meta device, against the published figures:\n")
    print("| model | parameters | buffers | published | ratio |\n|---|---|---|---|---|")
    for key, (p, b) in res["totals"].items():
        ref, text = KNOWN_TOTALS[key]
        print(f"| {key} | {p:,} | {b:,} | {text} | {p / ref:.3f} |")
    print("\nEdited parameter sets (regexes over the meta model's parameter names):\n")
    print(
        f"| model | stage | set | scope | tensors | parameters | LoRA r={args.rank} |\n|---|---|---|---|---|---|---|"
    )
    for key, rows in res["counts"].items():
        for ps, tensors, params, lora in rows:
            name = f"{ps.name} ({ps.note})" if ps.note else ps.name
            lora_txt = f"{lora:,}" if ps.stage == 2 else ""
            print(f"| {key} | {ps.stage} | {name} | {ps.scope_name} | {tensors} | {params:,} | {lora_txt} |")
    print(
        "\nCalibration, peak activation bytes of the tiny model's step (latents 16x16, 1 draw x 3 rows): measured "
        "on CPU / (replayed on meta / measured):\n"
    )
    print(
        "| tiny model | "
        + " | ".join(f"{m}, ckpt {'on' if c else 'off'}" for m in MODES for c in (False, True))
        + " |"
    )
    print("|---|" + "---|" * 2 * len(MODES))
    by_key = {}
    for key, _mode, _ckpt, measured, replayed, _ in res["calibration"]:
        by_key.setdefault(key, []).append(f"{measured:,} / {replayed / measured:.4f}x")
    for key, cells in by_key.items():
        print(f"| {key} | " + " | ".join(cells) + " |")
    print("\nActivations of one step at the published configs (meta replay), GiB, and training FLOPs per step:\n")
    print(
        "| model, set | fp32, no ckpt / ckpt | bf16, no ckpt / ckpt | LoRA (bf16 + fp32), no ckpt / ckpt "
        "| TFLOP/step bf16, no ckpt / ckpt |\n|---|---|---|---|---|"
    )
    for e in res["plan"]:
        a, fl = e["activations"], e["flops"]
        cells = [f"{_gib(a[m, False])} / {_gib(a[m, True])}" for m in MODES]
        print(f"| {_label(e)} | " + " | ".join(cells) + f" | {fl[False] / 1e12:.0f} / {fl[True] / 1e12:.0f} |")
    print(
        f"\nPer-GPU memory (GiB) on 1-8 GPUs. Usable with {args.headroom:.0%} headroom: "
        f"{_gib(usable['80 GB'])} GiB of an 80 GB GPU, {_gib(usable['141 GB'])} GiB of a 141 GB GPU"
        + ("; **bold** fits 80 GB, *italic* only 141 GB, plain neither." if args.markdown else ".")
    )
    for e in res["plan"]:
        print(f"\n{_label(e)}:\n")
        print("| setting | ckpt | " + " | ".join(str(n) for n in range(1, 9)) + " |\n|---|---|" + "---|" * 8)
        for setting in SETTINGS:
            for ckpt in (False, True):
                cells = []
                for n in range(1, 9):
                    tot = e["memory"][setting, ckpt, n]["total"]
                    txt = _gib(tot)
                    if args.markdown and tot <= usable["80 GB"]:
                        txt = f"**{txt}**"
                    elif args.markdown and tot <= usable["141 GB"]:
                        txt = f"*{txt}*"
                    cells.append(txt)
                print(f"| {SETTING_NAMES[setting]} | {'on' if ckpt else 'off'} | " + " | ".join(cells) + " |")
    parts = (
        "frozen_weights",
        "trainable_weights",
        "grads",
        "optimizer",
        "buffers",
        "activations",
        "gathered",
        "step_temporary",
        "total",
    )
    print(
        "\nBreakdown with gradient checkpointing, GiB, 1 GPU / 4 GPUs (peak = frozen + trainable + grads + "
        "optimizer + buffers + max(activations + gathered, step temporary)):\n"
    )
    print("| model, set | setting | " + " | ".join(p.replace("_", " ") for p in parts) + " |")
    print("|---|---|" + "---|" * len(parts))
    for e in res["plan"]:
        for setting in SETTINGS:
            m1, m4 = e["memory"][setting, True, 1], e["memory"][setting, True, 4]
            cells = [f"{_gib(m1[k])} / {_gib(m4[k])}" for k in parts]
            print(f"| {_label(e)} | {setting} | " + " | ".join(cells) + " |")
    print("\nSmallest setting that fits (fewest GPUs, checkpointing only where needed):\n")
    print("| model, set | GPU | " + " | ".join(SETTING_NAMES[s] for s in SETTINGS) + " |\n|---|---|" + "---|" * 4)
    for e in res["plan"]:
        for gpu, cap in usable.items():
            best = smallest_fit(e, cap)
            cells = [
                f"{best[s][0]} GPU{', ckpt' if best[s][1] else ''}" if s in best else "> 8 GPUs" for s in SETTINGS
            ]
            print(f"| {_label(e)} | {gpu} | " + " | ".join(cells) + " |")
    print("\nErase draws per GPU and step that fit (activations grow linearly with draws), checkpointing off / on:\n")
    cols = [(n, g) for n in (1, 4) for g in usable]
    print("| model, set | setting | " + " | ".join(f"{n} x {g}" for n, g in cols) + " |\n|---|---|" + "---|" * 4)
    for e in res["plan"]:
        for s in SETTINGS:
            cells = [" / ".join(str(max_draws(e, s, ck, n, usable[g])) for ck in (False, True)) for n, g in cols]
            print(f"| {_label(e)} | {s} | " + " | ".join(cells) + " |")
    flux = [e for e in res["plan"] if e["key"] == "flux-dev" and e["ps"].scope_name == "double-stream"]
    if flux:
        mem = flux[0]["memory"]
        print("\nGoals of issue 9:\n")
        for setting, n, gpu, what in (
            ("lora-r16", 1, "141 GB", f"LoRA r={args.rank}"),
            ("zero3-bf16", 4, "80 GB", "full visual set, ZeRO-3 bf16"),
        ):
            for ckpt in (False, True):
                tot = mem[setting, ckpt, n]["total"]
                verdict = "fits" if tot <= usable[gpu] else "does not fit"
                print(
                    f"- FLUX.1-dev {what} on {n} x {gpu}, checkpointing {'on' if ckpt else 'off'}: "
                    f"{_gib(tot)} GiB per GPU of {_gib(usable[gpu])} usable: {verdict}"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=1024, help="image side in pixels (latent = side / 8)")
    ap.add_argument("--batch", type=int, default=1, help="erase draws per GPU per step")
    ap.add_argument("--preserve", type=int, default=1, help="preservation draws R per erase draw")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank")
    ap.add_argument(
        "--headroom",
        type=float,
        default=0.10,
        help="fraction of GPU memory kept free for what the "
        "tracker does not see (allocator, CUDA context, NCCL, workspaces)",
    )
    ap.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--markdown", action="store_true", help="mark cells that fit (bold 80 GB, italic 141 GB)")
    args = ap.parse_args()
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    t0 = time.perf_counter()
    res = plan(args)
    print_report(res, args)
    print(f"\n(run time {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
