"""`trce-ray sweep`: a grid over TRCE's knobs, each point erased and evaluated as a Ray Tune trial."""

from __future__ import annotations

import argparse
import json

from .common import add_config_flags, add_stage1_flags, quiet_threads, resolve_config, stage1_overrides

EXAMPLES = """examples:
  trce-ray sweep --model toy --concept toy-red --preserve-prompts trce_ray/toy/prompts/preserve-red.txt \\
      --grid stage1.eta=0.002,0.005,0.01,0.02 --suite toy --metric toy/direct --output runs/sweep-eta
  trce-ray sweep --config jobs/configs/toy-sweep.yaml --output runs/sweep          # the same, from YAML
  trce-ray sweep --config jobs/configs/sd14-sexual.yaml --grid stage1.eta=0.002,0.005,0.01,0.02 \\
      --grid "stage1.tokens=[eot];[eot,key]" --suite sexual --data-dir /data/trce --metric adv_asr \\
      --max-concurrent 4 --output /mnt/shared/sweeps/eta        # paper Tables 3-4 on a GPU cluster
  trce-ray sweep ... --resume       # continue a killed sweep: finished trials are kept
  trce-ray sweep ... --resume --pick "min toy/direct where toy/preservation >= original - 0.05" \\
      --register toy-red-erased   # a finished sweep: pick (and register) without running any trial again
"""


def parse_grid_item(item: str) -> tuple[str, list]:
    """'stage1.eta=0.01,0.1' -> ('stage1.eta', [0.01, 0.1]); ';' separates values that contain commas."""
    import yaml

    from ..errors import ConfigError

    if "=" not in item:
        raise ConfigError(f"--grid {item!r} must look like section.field=V1,V2")
    key, raw = item.split("=", 1)
    parts = raw.split(";") if ";" in raw else raw.split(",")
    values = []
    for part in parts:
        try:
            values.append(yaml.safe_load(part))
        except yaml.YAMLError:
            values.append(part.strip())
    return key.strip(), values


def parse_space_item(item: str) -> tuple[str, dict]:
    """'stage1.eta=loguniform:1e-3,10' -> ('stage1.eta', {'loguniform': [0.001, 10]}); choice values as in --grid."""
    from ..errors import ConfigError

    key, sep, rest = item.partition("=")
    kind, sep2, raw = rest.partition(":")
    if not sep or not sep2 or kind not in ("loguniform", "uniform", "choice"):
        raise ConfigError(f"--space {item!r} must look like section.field=loguniform|uniform|choice:V1,V2")
    return key.strip(), {kind: parse_grid_item(f"{key}={raw}")[1]}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="erase and evaluate a grid of settings as Ray Tune trials",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every combination of --grid values (one Ray Tune trial each: erase, then evaluate) and "
        "write sweep.csv, sweep.md and sweep.png; every trial is a nested MLflow run under the sweep's run.",
    )
    add_config_flags(p)
    add_stage1_flags(p)
    g = p.add_argument_group("sweep")
    g.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2", help="a swept field (repeatable)")
    g.add_argument("--stages", help="erase stages of each trial: text (default), visual or text,visual")
    g.add_argument("--suite", help="eval suite of each trial (eval.suite), e.g. toy, sexual, multi")
    g.add_argument("--sets", dest="eval_sets", nargs="+", metavar="SET", help="eval sets of each trial (eval.sets)")
    g.add_argument("--data-dir", help="prompt-set folder (eval.data_dir)")
    g.add_argument("--metric", help="metric that ranks trials (sweep.metric), e.g. toy/direct, adv_asr")
    g.add_argument("--mode", choices=["min", "max"], help="lower (default) or higher metric is better")
    g.add_argument("--search", choices=["grid", "random", "optuna"], help="sweep.search (default grid)")
    g.add_argument("--num-samples", type=int, help="trials of a random or optuna search (sweep.num_samples)")
    g.add_argument("--space", action="append", default=[], metavar="FIELD=KIND:A,B", help="a typed space (repeatable)")
    g.add_argument(
        "--objective", action="append", default=[], metavar="METRIC:MODE", help="e.g. toy/direct:min (repeatable)"
    )
    g.add_argument("--max-concurrent", type=int, help="trials at once (sweep.max_concurrent, default 1)")
    g.add_argument("--resume", action="store_true", help="continue the sweep in --output, keeping finished trials")
    g.add_argument(
        "--pick",
        metavar="RULE",
        help="choose one trial (sweep.pick), e.g. 'min toy/direct where toy/preservation >= original - 0.05'",
    )
    g.add_argument(
        "--register",
        "--register-model",
        dest="register",
        metavar="NAME",
        help="register the picked trial's erased model in MLflow as NAME (sweep.register_as)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    grid = dict(parse_grid_item(item) for item in args.grid) or None
    space = dict(parse_space_item(item) for item in args.space) or None
    overrides = {
        **stage1_overrides(args),
        "sweep.grid": grid,
        "sweep.stages": args.stages,
        "sweep.search": args.search,
        "sweep.num_samples": args.num_samples,
        "sweep.space": space,
        "sweep.objectives": args.objective or None,
        "sweep.metric": args.metric,
        "sweep.mode": args.mode,
        "sweep.max_concurrent": args.max_concurrent,
        "sweep.pick": args.pick,
        "sweep.register_as": args.register,
        "eval.suite": args.suite,
        "eval.sets": args.eval_sets,
        "eval.data_dir": args.data_dir,
    }
    cfg = resolve_config(args, overrides, uses_cache=lambda c: "visual" in c.sweep.stages)
    quiet_threads()
    from ..sweep import run_sweep

    result = run_sweep(cfg, cfg.output, overwrite=args.overwrite, resume=args.resume)
    print((result.output / "sweep.md").read_text())
    failed = [r["trial"] for r in result.rows if r["error"]]
    grid_keys = set(cfg.sweep.grid)
    measured = sorted({k for r in result.rows for k, v in r.items() if isinstance(v, float) and k not in grid_keys})
    if cfg.sweep.metric and result.best is None and measured:
        from ..errors import TRCEError

        raise TRCEError(
            f"--metric {cfg.sweep.metric} is none of the trials' metrics ({', '.join(measured[:6])}, ...); "
            f"nothing is ranked, the results are in {result.output}/sweep.csv"
        )
    if result.best and len(result.ties) > 1:
        print(f"tied by {cfg.sweep.metric} ({cfg.sweep.mode}) and every other metric: {', '.join(result.ties)}")
    elif result.best:
        broken = f" (tie on {cfg.sweep.metric} broken by {', '.join(result.breakers)})" if result.breakers else ""
        print(f"best by {cfg.sweep.metric} ({cfg.sweep.mode}): {result.best['trial']}{broken}")
    summary = json.loads((result.output / "sweep.json").read_text())
    for goal, best in summary.get("best_by_objective", {}).items():
        print(f"best by {goal}: {best['trial']} ({best['value']:.4g})")
    if len(summary.get("objectives", [])) > 1:
        print(f"Pareto front ({', '.join(summary['objectives'])}): {', '.join(summary['pareto']) or 'empty'}")
    if failed:
        print(f"{len(failed)} trial(s) failed (errors in sweep.csv):")
        for r in result.rows:
            if r["error"]:
                print(f"  {r['trial']}: {r['error']}")
    if result.picked:
        p = result.picked
        tied = f"; tied with {', '.join(t for t in p['ties'] if t != p['trial'])}" if p["ties"] else ""
        print(f"picked by {p['rule']!r}: {p['trial']} ({p['value']:.4g}{tied})")
        if "registered" in p:
            reg = p["registered"]
            print(f"registered {p['trial']}'s erased model as {reg['name']} version {reg['version']}")
    print(f"wrote {result.output}/sweep.csv, sweep.md, sweep.png and trials/<name>/ (erase + eval per trial)")
    return 0
