"""`trce-ray toy` (not implemented yet)."""

from __future__ import annotations

from ..errors import TRCEError


def add_parser(sub) -> None:
    p = sub.add_parser("toy", help="(coming soon)", description="Not implemented yet.")
    p.set_defaults(run=run)


def run(args) -> int:
    raise TRCEError("'toy' is not implemented yet")
