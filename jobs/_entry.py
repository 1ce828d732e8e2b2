"""Shared by the job scripts: join the Ray cluster the job runs on (trce_ray.ray_runtime), then hand over to the CLI.

Inside `ray job submit`, Ray sets RAY_ADDRESS for the driver; `ensure_ray` joins that cluster (probing it first).
Without RAY_ADDRESS the CLI starts its own private local instance when a command needs Ray.
"""

from __future__ import annotations

import os
import sys


def run(argv: list[str]) -> int:
    from trce_ray.cli import main

    if os.environ.get("RAY_ADDRESS"):
        from trce_ray.errors import TRCEError
        from trce_ray.ray_runtime import ensure_ray

        try:
            ensure_ray()
        except TRCEError as err:
            print(f"trce-ray: error: {err}", file=sys.stderr)
            return 2
    return main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
