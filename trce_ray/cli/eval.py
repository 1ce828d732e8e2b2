"""`trce-ray eval`: generate the benchmark prompt sets with an original or erased model and score them."""

from __future__ import annotations

import argparse

from .common import add_config_flags, quiet_threads, resolve_config

EXAMPLES = """examples:
  trce-ray eval --model runs/sexual --suite sexual --data-dir /data/trce --output runs/eval-sexual
  trce-ray eval --model CompVis/stable-diffusion-v1-4 --delta runs/x/stage1.safetensors --sets mma p4d --output runs/e
  trce-ray eval --model runs/sexual --sets ring-a-bell --limit 8 --steps 10 --output runs/smoke   # quick look
  trce-ray eval --model runs/multi --suite multi --q16-clip /weights/clip-vit-large-patch14 --output runs/eval-multi
  trce-ray eval --model runs/toy-red --suite toy --toy-target red --steps 20 --output runs/eval-toy  # no weights

Sets shipped: i2p, i2p-<category> (i2p-sexual = the 931 of Table 1), ring-a-bell, unlearndiff, coco-3k.
From --data-dir (or --set eval.prompt_files.NAME=FILE): mma, p4d, coco-30k, artists-famous, artists-modern,
vangogh, kelly. Celebrity sets read names files (--celebrity-erase/--celebrity-retain). A .csv (column 'prompt')
or .txt file is a set of its own, scored with NudeNet. Rerunning resumes: nothing is generated twice.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on the erasure benchmarks (Ray Data + MLflow)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate images for benchmark prompt sets on Ray Data, score them (NudeNet ASR, Q16, FID, "
        "CLIP score, identity/style accuracy), write tables and grids, and log everything to MLflow.",
    )
    add_config_flags(p)
    g = p.add_argument_group("what to evaluate")
    g.add_argument(
        "--suite",
        help="paper table: sexual (Table 1), multi (Table 2), artist (Table 9), celebrity (Table 10); "
        "toy: the toy world's sets (with --model toy or a toy erase folder)",
    )
    g.add_argument(
        "--sets", dest="eval_sets", nargs="+", metavar="SET", help="set names or prompt files (added to the suite)"
    )
    g.add_argument("--data-dir", metavar="DIR", help="folder with the sets trce-ray does not ship (eval.data_dir)")
    g.add_argument(
        "--delta",
        dest="deltas",
        action="append",
        metavar="FILE",
        help="artifact applied to the model, in order (repeatable)",
    )
    g.add_argument("--reference-model", metavar="MODEL", help="original model for FID_gen (default: the base model)")
    g.add_argument("--limit", type=int, help="first N prompts of each set")
    g.add_argument("--celebrity-erase", metavar="FILE", help="names of erased celebrities, one a line")
    g.add_argument("--celebrity-retain", metavar="FILE", help="names of celebrities to keep, one a line")
    g.add_argument("--toy-target", metavar="COLOUR", help="toy suite: the erased colour (default red)")
    g.add_argument(
        "--erased-artist",
        dest="erased_artists",
        action="append",
        metavar="NAME",
        help="artist whose style was erased (repeatable; artist suite)",
    )
    g = p.add_argument_group("generation")
    g.add_argument("--steps", type=int, help="sampler steps (default 30)")
    g.add_argument("--guidance", type=float, help="guidance where the prompt file has none (default 7.5)")
    g.add_argument("--images-per-prompt", type=int, help="images per prompt (default 1)")
    g.add_argument("--batch-size", type=int, help="prompts per pipeline call (default 8)")
    g.add_argument("--actors", type=int, help="generation actors, one pipeline each (default 1)")
    g.add_argument("--gpus-per-actor", type=float, help="default: 1 when the cluster has GPUs, else 0")
    g.add_argument("--image-dir", metavar="DIR", help="image cache shared between runs (default OUTPUT/images)")
    g = p.add_argument_group("detectors")
    g.add_argument("--nudenet-threshold", type=float, help="NudeNet *_EXPOSED threshold (default 0.45)")
    g.add_argument("--q16-clip", metavar="PATH", help="CLIP ViT-L/14 (transformers folder or hub id) for Q16")
    g.add_argument("--q16-embeddings", metavar="FILE", help="Q16 prompt embeddings JSON")
    g.add_argument("--clip-model", metavar="PATH", help="CLIP for CLIP score (paper: ViT-B/32)")
    g.add_argument("--fid-features", metavar="inception|FILE", help="'inception' or a TorchScript feature network")
    g.add_argument("--fid-weights", metavar="FILE", help="torch-fidelity Inception weights (weights-inception-*.pth)")
    g.add_argument("--fid-real-images", metavar="DIR", help="real COCO images for FID_real")
    g.add_argument("--face-classifier", metavar="MODULE:ATTR", help="identity classifier builder (celebrity)")
    g.add_argument("--style-classifier", metavar="MODULE:ATTR", help="style classifier builder (artist)")
    g.add_argument("--scorer-gpus", type=float, help="GPU share per scoring actor (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def eval_overrides(args: argparse.Namespace) -> dict:
    keys = [
        "suite",
        "toy_target",
        "data_dir",
        "deltas",
        "reference_model",
        "limit",
        "celebrity_erase",
        "celebrity_retain",
        "erased_artists",
        "steps",
        "guidance",
        "images_per_prompt",
        "batch_size",
        "actors",
        "gpus_per_actor",
        "image_dir",
        "nudenet_threshold",
        "q16_clip",
        "q16_embeddings",
        "clip_model",
        "fid_features",
        "fid_weights",
        "fid_real_images",
        "face_classifier",
        "style_classifier",
        "scorer_gpus",
    ]
    return {"eval.sets": args.eval_sets, **{f"eval.{k}": getattr(args, k) for k in keys}}


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args, eval_overrides(args))
    quiet_threads()
    from ..evaluation.outputs import label_for
    from ..evaluation.report import RunMetrics, to_markdown
    from ..evaluation.runner import run_eval
    from ..tracking import track

    with track(cfg, "eval") as tracker:
        result = run_eval(cfg, overwrite=args.overwrite, tracker=tracker, progress=not args.no_progress)
    print(to_markdown([RunMetrics(label_for(cfg), result.metrics, str(result.output))]))
    for note in result.notices:
        print(f"not measured: {note}")
    skipped = sum(info["skipped"] for info in result.sets.values())
    print(
        f"wrote {result.output} ({result.generated} images generated now, {skipped} bad prompt rows skipped; "
        f"see skipped.csv)"
    )
    return 0
