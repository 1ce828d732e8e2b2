"""Stage-1 statistics computed once, against computed every time, in one process:

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/stage1_stats.py [--model toy] [--erasures 20] [--sizes 1000 30000]

1. `--erasures` single-concept erasures on the same model (the 11 built-in packs, then one-name person concepts),
   first each computing its preservation statistics (baseline), then sharing one store: text-encoder calls (batches),
   prompts embedded and wall time, as ratios against the baseline.
2. Peak resident memory of embedding `--sizes` preservation prompts into the Gram sum (each size in a fresh process,
   so one size's peak does not hide another's), against loading the model and embedding nothing; beside it, what
   holding every embedding would take.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAMES = ["Tom Cruise", "Marilyn Monroe", "Elvis Presley", "Taylor Swift", "Brad Pitt", "Angelina Jolie", "Bill Gates"]
NAMES += ["Oprah Winfrey", "Barack Obama", "Emma Watson", "Keanu Reeves", "Lady Gaga", "Morgan Freeman"]


def _concepts(n: int, folder: Path) -> list[str]:
    from trce_ray.concepts import builtin_packs

    out = builtin_packs()[:n]
    for name in NAMES[: n - len(out)]:
        path = folder / f"{name.replace(' ', '-').lower()}.txt"
        path.write_text(name + "\n")
        out.append(str(path))
    return out


def erasures(model: str, n: int, preserve_count: int) -> None:
    import torch

    from trce_ray.config import Stage1Config
    from trce_ray.models import adapter_for, load_pipeline
    from trce_ray.models.loading import model_fingerprint, resolve_model_path
    from trce_ray.stage1.run import compute_stage1, stage1_inputs
    from trce_ray.stage1.stats import stats_store

    torch.set_num_threads(1)
    pipe = load_pipeline(resolve_model_path(model))
    adapter = adapter_for(pipe)
    counts = {"calls": 0, "prompts": 0, "preserve": 0}
    original = adapter.encode_text
    keep_set: set[str] = set()

    def counted(prompts, *args, **kw):
        counts["calls"] += 1
        counts["prompts"] += len(prompts)
        counts["preserve"] += set(prompts) <= keep_set
        return original(prompts, *args, **kw)

    adapter.encode_text = counted
    folder = Path(tempfile.mkdtemp(prefix="trce-bench-stats-"))
    concepts = _concepts(n, folder)
    rows = {}
    for mode in ("every time", "shared"):
        store = stats_store(folder / "cache", model_fingerprint(model), "float32") if mode == "shared" else None
        counts.update(calls=0, prompts=0, preserve=0)
        t0 = time.perf_counter()
        n_erase = 0
        for concept in concepts:
            s1 = Stage1Config(concept=concept, preserve_count=preserve_count, templates=15)
            _, pairs, keep = stage1_inputs(s1)
            keep_set.update(keep)
            n_erase += len(pairs)
            compute_stage1(adapter, pairs, keep, s1, store=store)
        rows[mode] = (counts["calls"], counts["preserve"], counts["prompts"], time.perf_counter() - t0)
        print(f"  {mode}: done in {rows[mode][-1]:.1f} s", flush=True)
    base = rows["every time"]
    print(f"{n} single-concept erasures on {model} ({n_erase} erase prompts in all), {preserve_count} preservation")
    print("prompts each; encoder calls are batches of up to 64 prompts:")
    print(f"  {'':<12}{'encoder calls':>18}{'preservation calls':>20}{'prompts embedded':>20}{'wall s':>16}")
    for mode, (calls, pres, prompts, wall) in rows.items():
        print(
            f"  {mode:<12}{calls:>8} ({calls / base[0]:.3f}x){pres:>10} ({pres / base[1]:.3f}x)"
            f"{prompts:>10} ({prompts / base[2]:.3f}x){wall:>8.1f} ({wall / base[3]:.3f}x)",
            flush=True,
        )


def preservation_prompts(n: int) -> list[str]:
    """`n` distinct prompts: the vendored COCO captions, then the same with a numbered suffix."""
    from trce_ray.concepts import COCO_PRESERVE

    base = COCO_PRESERVE.read_text().splitlines()
    return [base[i % len(base)] + ("" if i < len(base) else f", view {i // len(base)}") for i in range(n)]


def one_size(model: str, n: int) -> None:
    """Child process: embed `n` preservation prompts into the sum (n = 0: load only); print peak RSS as JSON."""
    import torch

    from trce_ray.models import adapter_for, load_pipeline
    from trce_ray.models.loading import resolve_model_path
    from trce_ray.stage1.embeddings import preserve_gram

    torch.set_num_threads(1)
    adapter = adapter_for(load_pipeline(resolve_model_path(model)))
    t0 = time.perf_counter()
    d = 0
    if n:
        gram, rows = preserve_gram(adapter, preservation_prompts(n), "all")
        d = gram.shape[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n": n, "peak": peak, "seconds": time.perf_counter() - t0, "d": d}))


def memory(model: str, sizes: list[int]) -> None:
    out = []
    for n in [0, *sizes]:
        print(f"  embedding {n} preservation prompts in a fresh process", flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--model", model, "--one-size", str(n)], capture_output=True, text=True
        )
        if child.returncode:
            raise SystemExit(child.stderr)
        out.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(f"    peak {out[-1]['peak'] / 1e6:.0f} MB, {out[-1]['seconds']:.1f} s", flush=True)
    base = out[0]["peak"]
    d = max(r["d"] for r in out)
    print(f"peak resident memory embedding preservation prompts on {model} (streamed Gram sum, batches of 64):")
    print(f"  {'prompts':>8}{'peak MB':>10}{'vs load':>9}{'embed s':>9}{'all embeddings held (float64)':>32}")
    for r in out:
        held = r["n"] * 77 * d * 8 / 1e6
        print(
            f"  {r['n']:>8}{r['peak'] / 1e6:>10.0f}{r['peak'] / base:>8.2f}x{r['seconds']:>9.1f}"
            f"{(f'{held:.0f} MB' if r['n'] else '-'):>32}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="toy")
    ap.add_argument("--erasures", type=int, default=20)
    ap.add_argument("--preserve-count", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 30000])
    ap.add_argument("--one-size", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_size is not None:
        one_size(args.model, args.one_size)
        return
    erasures(args.model, args.erasures, args.preserve_count)
    memory(args.model, args.sizes)


if __name__ == "__main__":
    main()
