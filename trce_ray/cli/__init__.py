"""`trce-ray` command line: one subcommand per module in this package, each with `add_parser` and `run`.

Subcommand modules import heavy libraries (torch, ray, diffusers) inside `run`, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from contextlib import contextmanager

from ..errors import TRCEError, TRCEWarning

SUBCOMMANDS = ["erase", "cache", "train", "eval", "sweep", "campaign", "report", "toy"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trce-ray", description="TRCE concept erasure for text-to-image diffusion models, on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Exit status: 0 done, 2 a one-sentence error, 130/143 stopped by SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    from .. import interrupts
    from ..quiet import quiet_libraries

    previous = interrupts.install_handlers(args.command)
    try:
        quiet_libraries()
        with _warnings_as_lines(args.command):
            result = args.run(args)
    except (KeyboardInterrupt, SystemExit, Exception) as err:
        # A signal may surface as Ray's or a library's own exception (a failed task, sys.exit in a handler): once
        # one arrived, whatever unwinds is reported as the interruption it is.
        if interrupts.received() is not None or isinstance(err, KeyboardInterrupt):
            interrupts.unwound()
            text, status = interrupts.exit_message(args.command)
            print(text, file=sys.stderr, flush=True)
            return status
        if isinstance(err, TRCEError):
            print(f"trce-ray {args.command}: error: {err}", file=sys.stderr)
            return 2
        raise
    finally:
        interrupts.restore_handlers(previous)
    return int(result or 0)


@contextmanager
def _warnings_as_lines(command: str):
    """Print trce-ray's own warnings as "trce-ray COMMAND: warning: ..." lines, not with a source location."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, TRCEWarning):
            print(f"trce-ray {command}: warning: {message}", file=sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
