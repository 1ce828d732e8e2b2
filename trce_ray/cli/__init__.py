"""`trce-ray` command line: one subcommand per module in this package, each with `add_parser` and `run`.

Subcommand modules import heavy libraries (torch, ray, diffusers) inside `run`, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import TRCEError

SUBCOMMANDS = ["erase", "cache", "train", "eval", "sweep", "report", "toy"]


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
    args = build_parser().parse_args(argv)
    from ..quiet import quiet_libraries

    quiet_libraries()
    try:
        result = args.run(args)
    except TRCEError as err:
        print(f"trce-ray {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trce-ray {args.command}: interrupted; rerunning the command reuses finished parts", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
