"""`trce-ray toy`: the built-in toy world (train it, run the demo, measure its quality gates)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_set_flag, quiet_threads

FAMILIES = ("sd", "flux")  # the toy models: SD-1.x-style UNet, FLUX-style transformer

EXAMPLES = """examples:
  trce-ray toy demo --output runs/demo                     # erase 'red', print the Table-1-style comparison
  trce-ray toy demo --output runs/demo --target blue --set stage1.eta=0.05 --overwrite
  trce-ray toy demo --output runs/all --target all --seeds 0 1 2   # every colour, figures over 3 seeds
  trce-ray toy demo --family flux --output runs/demo-flux  # the same on the FLUX toy (flow-matching transformer)
  trce-ray toy gates                                        # measure the shipped model's quality gates
  trce-ray toy gates --family flux                          # ... of the FLUX toy
  trce-ray toy train --output runs/toy                      # retrain from the shipped recipe (seed 0)
  trce-ray toy train --output trce_ray/toy/weights --overwrite   # refresh the shipped weights
  trce-ray toy train --family flux --output runs/flux-toy   # the FLUX toy (transformer, T5, rectified flow)
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "toy",
        help="built-in toy world: demo, quality gates, training",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A tiny Stable-Diffusion pipeline and attribute classifier over a world of coloured shapes.",
    )
    tsub = p.add_subparsers(dest="toy_command", required=True, metavar="ACTION")

    d = tsub.add_parser("demo", help="erase a colour and compare original vs erased rows (the main job)")
    d.add_argument("--output", metavar="DIR", required=True, help="output folder (refused if it exists)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    d.add_argument("--config", metavar="FILE", help="demo YAML (see jobs/configs/toy-demo.yaml)")
    d.add_argument("--family", choices=FAMILIES, help="which shipped toy model (default sd; flux: the FLUX toy)")
    d.add_argument("--target", help="colour to erase (default red), a comma-separated list (red,blue) or all")
    d.add_argument("--rows", nargs="+", metavar="ROW", help="erased rows to run (default: all registered)")
    d.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    d.add_argument("--seed", type=int, help="prompt and generation seed (and the erasure's)")
    d.add_argument("--seeds", type=int, nargs="+", metavar="N", help="generation seeds to score over: mean and spread")
    add_set_flag(d, "override any demo field, e.g. --set stage1.eta=0.05 --set n_direct=16 (repeatable)")
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    d.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    d.add_argument("--experiment", help="MLflow experiment (tracking.experiment, default trce-ray)")
    d.add_argument(
        "--no-tracking", dest="tracking_enabled", action="store_false", default=None, help="do not log to MLflow"
    )
    d.add_argument(
        "--allow-job-local-paths",
        action="store_true",
        help="inside a Ray job, accept an output in the job's temporary folder (docs/cluster.md)",
    )
    d.set_defaults(run=run)

    g = tsub.add_parser("gates", help="measure the shipped model against its quality gates")
    g.add_argument("--family", choices=FAMILIES, default="sd", help="which shipped toy model (default sd)")
    g.add_argument("--pipeline", metavar="DIR", help="measure this trained pipeline folder instead of the shipped one")
    g.add_argument("--n", type=int, default=16, help="prompts per colour per set (default 16)")
    g.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    g.set_defaults(run=run)

    t = tsub.add_parser("train", help="train the toy pipeline and classifier from a seed")
    t.add_argument("--output", metavar="DIR", required=True, help="output folder (refused if it exists)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    t.add_argument("--family", choices=FAMILIES, default="sd", help="which toy model to train (default sd)")
    t.add_argument("--config", metavar="FILE", help="training recipe YAML (default: the shipped recipe)")
    t.add_argument("--seed", type=int, help="seed of every random draw")
    add_set_flag(t, "override a recipe field, e.g. --set unet_steps=200 (repeatable)")
    t.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the shipped weights were made with 1, and float sums depend on it)",
    )
    t.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    t.set_defaults(run=run)


def _overrides(args, named: dict) -> dict:
    from ..config import parse_set

    merged = dict(named)
    for item in args.sets:
        key, value = parse_set(item)
        merged[key] = value
    return merged


def run(args: argparse.Namespace) -> int:
    quiet_threads()
    return {"demo": _demo, "gates": _gates, "train": _train}[args.toy_command](args)


def _demo(args) -> int:
    from ..config.paths import absolute, check_job_paths, written_paths
    from ..toy.demo import ToyDemoConfig, _TrackedDemo, run_demo
    from ..tracking import track

    cfg = ToyDemoConfig.load(
        args.config,
        _overrides(
            args,
            {
                "family": args.family,
                "target": args.target,
                "rows": args.rows,
                "device": args.device,
                "seed": args.seed,
                "seeds": args.seeds,
                "tracking.uri": args.tracking_uri,
                "tracking.experiment": args.experiment,
                "tracking.enabled": args.tracking_enabled,
            },
        ),
    )
    output = absolute(args.output)
    tracked = _TrackedDemo(cfg, output)
    check_job_paths({"--output": output, **written_paths(tracked, ())}, args.allow_job_local_paths)
    with track(tracked, "toy-demo", run_name=f"toy demo {Path(output).name}") as tracker:
        results = run_demo(cfg, output, overwrite=args.overwrite, progress=not args.no_progress, tracker=tracker)
        for name in ("table.txt", "results.json"):
            tracker.log_artifact(Path(output) / name)
    if "colours" in results:
        print(results["summary"])
        print(f"wrote {args.output}/results.json, table.txt and one demo folder per colour")
    else:
        print(results["table"])
        print(f"wrote {args.output}/results.json, grids and one folder per erased row")
    return 0


def _gates(args) -> int:
    from ..artifacts import write_json
    from ..toy.gates import measure_gates

    report = measure_gates(n_per_colour=args.n, progress=True, family=args.family, pipeline=args.pipeline)
    for line in report["lines"]:
        print(line)
    if args.json:
        write_json(args.json, report)
    return 0 if report["passed"] else 1


def _train(args) -> int:
    import torch

    from ..errors import TRCEError
    from ..toy.train import ToyTrainConfig, train_toy

    if args.threads < 1:
        raise TRCEError(f"--threads must be >= 1 (got {args.threads})")
    torch.set_num_threads(args.threads)

    if args.family == "flux":
        from ..toy.flux_train import FluxTrainConfig, train_flux_toy

        cfg = FluxTrainConfig.load(args.config, _overrides(args, {"seed": args.seed}))
        log = train_flux_toy(cfg, args.output, overwrite=args.overwrite, progress=not args.no_progress)
        print(
            f"wrote {args.output}: FLUX transformer + T5 + CLIP {log['timings']['total_s'] / 60:.1f} min "
            f"({log['timings']['total_cpu_s'] / 60:.1f} CPU-min) on {log['threads']} thread(s)"
        )
        return 0
    cfg = ToyTrainConfig.load(args.config, _overrides(args, {"seed": args.seed}))
    log = train_toy(cfg, args.output, overwrite=args.overwrite, progress=not args.no_progress)
    t = log["timings"]
    print(
        f"wrote {args.output}: VAE {t['vae_s']:.0f}s, UNet + text encoder {t['denoiser_s']:.0f}s, "
        f"classifier {t['classifier_s']:.0f}s, total {t['total_s'] / 60:.1f} min on {log['threads']} thread(s)"
    )
    return 0
