"""Ray job: any trce-ray subcommand, e.g.

ray job submit --working-dir . -- python jobs/run.py eval --config jobs/configs/eval-sexual.yaml \
    --model /mnt/runs/sexual --output /mnt/evals/sexual
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _entry import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
