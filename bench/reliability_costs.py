"""What the reliability checks cost, against the work they guard, in one process:

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/reliability_costs.py [--model toy] [--mb 512]

1. The base-model fingerprint (sha256 of denoiser, text encoders, tokenizers, scheduler) against loading the same
   pipeline: cold (first time on this machine), then warm (the per-file-stamp memo on disk, as a new process sees it).
2. sha256 of a cache shard's bytes (what a reuse check does per shard) against reading the same bytes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="toy")
    ap.add_argument("--mb", type=int, default=512, help="size of the file hashed in part 2")
    args = ap.parse_args()
    os.environ["TRCE_CACHE_HOME"] = tempfile.mkdtemp(prefix="trce-bench-")  # a cold fingerprint memo

    import trce_ray.models.loading as loading

    path = loading.resolve_model_path(args.model)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1e6
    loading.load_pipeline(path)  # imports and file cache warm, so the baseline is the load itself
    t0 = time.perf_counter()
    loading.load_pipeline(path)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loading.model_fingerprint(args.model)
    cold_s = time.perf_counter() - t0
    loading._FINGERPRINT_MEMO.clear()  # what a new process starts with; the memo file stays
    t0 = time.perf_counter()
    loading.model_fingerprint(args.model)
    warm_s = time.perf_counter() - t0
    print(f"model {args.model}: {size:.1f} MB on disk")
    print(f"  load_pipeline            {load_s:8.3f} s  (baseline)")
    print(f"  fingerprint, cold        {cold_s:8.3f} s  ({cold_s / load_s:.2f}x the load)")
    print(f"  fingerprint, memo on disk {warm_s:7.3f} s  ({warm_s / load_s:.3f}x the load)")

    with tempfile.NamedTemporaryFile(dir=os.environ["TRCE_CACHE_HOME"]) as f:
        f.write(os.urandom(args.mb << 20))
        f.flush()
        t0 = time.perf_counter()
        with open(f.name, "rb") as g:
            while g.read(1 << 24):
                pass
        read_s = time.perf_counter() - t0
        from trce_ray.artifacts import sha256_file

        t0 = time.perf_counter()
        sha256_file(f.name)
        hash_s = time.perf_counter() - t0
    print(
        f"shard check on {args.mb} MB: read {read_s:.3f} s (baseline), read + sha256 {hash_s:.3f} s "
        f"({hash_s / read_s:.1f}x; {args.mb / hash_s:.0f} MB/s)"
    )


if __name__ == "__main__":
    main()
