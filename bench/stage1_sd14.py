"""Stage 1 at SD-1.4 shapes: embedding time, solve time, and the solve against a per-layer, per-prompt loop.

Random weights in the published SD-1.4 UNet and CLIP ViT-L/14 text configs (16 cross-attention layers, 32 K/V
matrices), 300 erase prompts (sexual pack, 20 synonyms x 15 templates) and 1,000 COCO preservation prompts.

    OMP_NUM_THREADS=2 python bench/stage1_sd14.py            # prints a markdown table
    python bench/stage1_sd14.py --erase-synonyms 4 --preserve 100   # quick check

The reference evaluates Eq. 5 as the UCE/TRCE scripts do: for every layer, loop over prompts accumulating
W e_s e_m^T and e e^T terms, then invert the layer's factor; all in float64 from the same hidden states.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig

from trce_ray.concepts import expand_pack, load_pack, preserve_prompts
from trce_ray.models import adapter_for
from trce_ray.models.tiny import sd_pipeline, tiny_text_encoder, tiny_vae
from trce_ray.models.tokenizer import BOS_ID, EOS_ID
from trce_ray.stage1.closed_form import solve_map, stream_statistics
from trce_ray.stage1.embeddings import erase_embeddings, gram_of

SD14_UNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=64,
)
CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=EOS_ID,
)


def sd14_random_pipeline() -> StableDiffusionPipeline:
    torch.manual_seed(0)
    return sd_pipeline(tiny_vae(), tiny_text_encoder(CLIPTextConfig(**CLIP_L)), UNet2DConditionModel(**SD14_UNET))


def reference_loop(weights: dict[str, torch.Tensor], e_m, e_s, keep_hidden: list[torch.Tensor], eta: float):
    """Per layer: per-prompt accumulation of Eq. 5's sums, then an explicit inverse (float64)."""
    out = {}
    n, q = e_m.shape[0], sum(h.shape[0] * h.shape[1] for h in keep_hidden)
    for name, w in weights.items():
        w = w.double()
        num = torch.zeros_like(w)
        den = torch.zeros(w.shape[1], w.shape[1], dtype=torch.float64)
        for i in range(n):
            num += torch.outer(w @ e_s[i], e_m[i]) / n
            den += torch.outer(e_m[i], e_m[i]) / n
        for batch in keep_hidden:
            for ctx in batch:  # one preservation prompt: [L, D]
                num += eta * (w @ ctx.T) @ ctx / q
                den += eta * ctx.T @ ctx / q
        out[name] = num @ torch.linalg.inv(den)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--erase-synonyms", type=int, default=20)
    ap.add_argument("--templates", type=int, default=15)
    ap.add_argument("--preserve", type=int, default=1000)
    ap.add_argument("--eta", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=50)
    args = ap.parse_args()

    t0 = time.perf_counter()
    pipe = sd14_random_pipeline()
    adapter = adapter_for(pipe)
    build_s = time.perf_counter() - t0
    pairs = expand_pack(load_pack("sexual"), args.templates, args.erase_synonyms)
    keep = preserve_prompts(None, args.preserve)
    targets = adapter.edit_targets()
    print(
        f"# SD-1.4 shapes: {len(targets)} K/V matrices, {len(pairs)} erase, {len(keep)} preservation prompts "
        f"(model built in {build_s:.1f}s, torch threads {torch.get_num_threads()})"
    )

    t0 = time.perf_counter()
    e_m, e_s = erase_embeddings(adapter, pairs, ["eot"], batch_size=args.batch_size)
    keep_hidden, keep_eot = [], []
    for i in range(0, len(keep), args.batch_size):
        enc = adapter.encode_text(keep[i : i + args.batch_size])
        keep_hidden.append(enc.hidden.double())
        keep_eot.append(enc.eot_index)
    embed_s = time.perf_counter() - t0

    params = dict(adapter.denoiser.named_parameters())
    weights = {n: params[n].detach() for n in targets}

    t0 = time.perf_counter()
    gram, q = None, 0
    for h, eot in zip(keep_hidden, keep_eot):
        g, c = gram_of(h, eot)
        gram, q = (g if gram is None else gram + g), q + c
    stats = stream_statistics(e_m, e_s, gram, q, len(pairs), len(keep))
    m = solve_map(stats, args.eta, "normalised")  # each sum over its count, as reference_loop
    ours = {n: w.double() @ m for n, w in weights.items()}
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = reference_loop(weights, e_m, e_s, keep_hidden, args.eta)
    ref_s = time.perf_counter() - t0

    rel = max(float((ours[n] - ref[n]).abs().max() / ref[n].abs().max()) for n in ref)
    print("| step | seconds |\n|---|---|")
    print(f"| embed ({len(pairs)} + {len(pairs)} + {len(keep)} prompts, CLIP-L) | {embed_s:.2f} |")
    print(f"| solve, ours (one Gram, one float64 Cholesky per text stream, W @ M per matrix) | {ours_s:.2f} |")
    print(f"| solve, reference (per layer, per prompt, float64 inverse per layer) | {ref_s:.2f} |")
    print(f"\nspeed-up of the solve: {ref_s / ours_s:.1f}x; max relative difference of W': {rel:.2e}")


if __name__ == "__main__":
    main()
