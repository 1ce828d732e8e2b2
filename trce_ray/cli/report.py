"""`trce-ray report` (not implemented yet)."""

from __future__ import annotations

from ..errors import TRCEError


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="(coming soon)", description="Not implemented yet.")
    p.set_defaults(run=run)


def run(args) -> int:
    raise TRCEError("'report' is not implemented yet")
