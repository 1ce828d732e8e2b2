"""`trce-ray campaign`: many erasures (concepts, stages, eval suite, overrides each) as one job of Ray tasks."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  trce-ray campaign --file jobs/configs/toy-campaign.yaml --output runs/campaign
  trce-ray campaign --file jobs/configs/toy-campaign.yaml --output runs/campaign --resume   # keep finished ones
  trce-ray report runs/campaign                     # one row per finished erasure
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "campaign",
        help="run many erasures (each erased and evaluated) as one job of Ray tasks",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Erase and evaluate every entry of a campaign file (docs/campaign.md) as a Ray task, each into "
        "DIR/<name>/ and its own MLflow run under the campaign's run; write campaign.csv and campaign.md.",
    )
    p.add_argument("--file", required=True, metavar="CAMPAIGN_YAML", help="the campaign: a list of erasures")
    p.add_argument("--output", required=True, metavar="DIR", help="campaign folder: DIR/<name>/ per erasure")
    p.add_argument("--resume", action="store_true", help="continue the campaign in --output, keeping finished ones")
    p.add_argument("--overwrite", action="store_true", help="replace an existing campaign folder")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="erasures at once (default: as many as fit)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    p.add_argument("--experiment", default="trce-ray", help="MLflow experiment of the campaign and its erasures")
    p.add_argument(
        "--no-tracking", dest="tracking_enabled", action="store_false", help="log nothing to MLflow (tracking.enabled)"
    )
    p.add_argument(
        "--allow-job-local-paths",
        action="store_true",
        help="inside a Ray job, accept an output in the job's temporary folder (docs/cluster.md)",
    )
    p.set_defaults(run=run)


def campaign_config(args: argparse.Namespace):
    """The campaign's own settings, every path absolute where the command is issued (config/paths.py)."""
    from pydantic import field_validator

    from ..config import TrackingConfig
    from ..config.base import Section, at_least_one
    from ..config.paths import absolute, check_job_paths, tracking_uri, written_paths

    class CampaignConfig(Section):
        file: str
        output: str
        max_concurrent: int | None
        tracking: TrackingConfig
        allow_job_local_paths: bool

        _positive = field_validator("max_concurrent")(at_least_one)

    uri = tracking_uri(args.tracking_uri) if args.tracking_enabled else args.tracking_uri
    tracking = TrackingConfig(uri=uri, experiment=args.experiment, enabled=args.tracking_enabled)
    from ..config.base import validate

    cfg = validate(
        CampaignConfig,
        {
            "file": absolute(args.file),
            "output": absolute(args.output),
            "max_concurrent": args.max_concurrent,
            "tracking": tracking,
            "allow_job_local_paths": args.allow_job_local_paths,
        },
    )
    check_job_paths(written_paths(cfg, ("output",)), cfg.allow_job_local_paths)
    return cfg


def run(args: argparse.Namespace) -> int:
    from ..campaign_run import run_campaign
    from .common import quiet_threads

    cfg = campaign_config(args)
    quiet_threads()
    result = run_campaign(cfg, resume=args.resume, overwrite=args.overwrite)
    print((result.output / "campaign.md").read_text())
    failed = [r for r in result.rows if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(result.rows)} erasure(s) failed (errors in campaign.csv):")
        for r in failed:
            print(f"  {r['erasure']}: {r['error']}")
    kept = sum(r["status"] == "kept" for r in result.rows)
    if kept:
        print(f"kept {kept} erasure(s) finished by an earlier run")
    print(f"wrote {result.output}/campaign.csv, campaign.md and <name>/ (erase + eval per erasure)")
    return 0
