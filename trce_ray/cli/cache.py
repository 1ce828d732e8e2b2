"""`trce-ray cache` (not implemented yet)."""

from __future__ import annotations

from ..errors import TRCEError


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="(coming soon)", description="Not implemented yet.")
    p.set_defaults(run=run)


def run(args) -> int:
    raise TRCEError("'cache' is not implemented yet")
