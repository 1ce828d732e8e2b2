"""Ray job: any trce-ray subcommand (see jobs/README.md for the address and token), e.g.

ray job submit --working-dir . --runtime-env cluster/runtime-env.yaml -- python jobs/run.py eval \
    --model /mnt/shared/runs/sexual --suite sexual --data-dir /mnt/shared/data --output /mnt/shared/evals/sexual
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _entry import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
