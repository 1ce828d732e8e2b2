"""Shared by the job scripts: join the Ray cluster the job runs on, then hand over to the CLI."""

from __future__ import annotations

import os
import sys


def run(argv: list[str]) -> int:
    import ray

    from trce_ray.cli import main

    if os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        ray.init(address="auto")  # inside `ray job submit` this joins the job's cluster
    return main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
