"""Ray job: TRCE erasure.

ray job submit --working-dir . --runtime-env cluster/runtime-env.yaml -- \
    python jobs/erase.py --config jobs/configs/sd14-sexual.yaml --output /mnt/shared/runs/sexual
python jobs/erase.py --model toy --concept toy-red --output runs/red     # local, no cluster needed
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _entry import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(["erase", *sys.argv[1:]]))
