"""`trce-ray report`: paper-shaped comparison tables (markdown + HTML) from eval folders or MLflow runs."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  trce-ray report runs/eval-sd14 runs/eval-trce-t runs/eval-trce-tv --output runs/report
  trce-ray report runs/campaign                        # a campaign folder: one row per finished erasure
  trce-ray report --experiment trce-ray --output runs/report        # every finished eval run, oldest first
  trce-ray report 3f2c...e9 a81b...07 --tracking-uri sqlite:///mlflow.db
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="compare evaluated models in the paper's table layout",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print and save (report.md, report.html) tables shaped like TRCE's Table 1/2/9/10.",
    )
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="eval output folders or MLflow run ids")
    p.add_argument("--experiment", default="trce-ray", help="MLflow experiment to read when no source is given")
    p.add_argument("--last", type=int, help="only the newest N eval runs of the experiment")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    p.add_argument("--output", metavar="DIR", help="folder for report.md and report.html (default: print only)")
    p.add_argument(
        "--no-tracking",
        dest="tracking_enabled",
        action="store_false",
        help="do not log the report as an MLflow run (it goes to --experiment, tag trce.command=report)",
    )
    p.set_defaults(run=run)


def report_config(args: argparse.Namespace):
    """The report's own run settings: what it read, where it writes, and where it logs (absolute, paths.py)."""
    from ..config import TrackingConfig
    from ..config.base import Section
    from ..config.paths import absolute, tracking_uri

    class ReportConfig(Section):
        sources: list[str]
        last: int | None
        output: str | None
        tracking: TrackingConfig

    tracking = TrackingConfig(
        uri=tracking_uri(args.tracking_uri) if args.tracking_enabled else args.tracking_uri,
        experiment=args.experiment,
        enabled=args.tracking_enabled,
    )
    output = absolute(args.output) if args.output else None
    return ReportConfig(sources=list(args.sources), last=args.last, output=output, tracking=tracking)


def run(args: argparse.Namespace) -> int:
    from ..artifacts import atomic_file
    from ..campaign import report_runs
    from ..evaluation.report import from_mlflow, is_run_id, to_html, to_markdown
    from ..tracking import track

    cfg = report_config(args)
    folders = [s for s in args.sources if not is_run_id(s)]
    run_ids = [s for s in args.sources if is_run_id(s)]
    runs = [r for f in folders for r in report_runs(f)]  # a campaign folder: one row per erasure
    if run_ids or not args.sources:
        runs += from_mlflow(cfg.tracking.uri, args.experiment, run_ids, args.last)
    text = to_markdown(runs)
    print(text)
    with track(cfg, "report", run_name=f"report {Path(cfg.output).name}" if cfg.output else "report") as tracker:
        tracker.log_text("# trce-ray evaluation report\n\n" + text, "report.md")
        tracker.log_text(to_html(runs), "report.html")
        tracker.set_tags(
            {"trce.report.rows": len(runs), "trce.report.sources": ", ".join(r.source for r in runs)[:5000]}
        )
        if cfg.output:
            out = Path(cfg.output)
            out.mkdir(parents=True, exist_ok=True)
            with atomic_file(out / "report.md") as tmp:
                tmp.write_text("# trce-ray evaluation report\n\n" + text)
            with atomic_file(out / "report.html") as tmp:
                tmp.write_text(to_html(runs))
            print(f"wrote {out / 'report.md'} and {out / 'report.html'}")
    return 0
