"""Stage 1 on the FLUX toy: which T5 token roles, with or without the pooled-path edit (the Table 4 analogue).

    PYTHONPATH=. OMP_NUM_THREADS=1 python -u bench/toy_flux_roles.py [--colours red blue] \\
        [--tokens eot last key all eot,last] [--pooled on off] [--eta 1] [--n 24] [--per-colour 6]

For each colour, the shipped FLUX toy (`trce_ray/toy/weights-flux`) is erased by stage 1 alone with the demo's
settings (`normalised` convention, the demo's eta, pack `toy-<colour>`, its preservation prompts), once per token-role
set and pooled setting, and scored like the demo: `direct` / `paraphrase` are the rates at which the toy classifier
reads the erased colour (lower is better), `preserve` is colour accuracy on every other colour, FID_gen the Frechet
distance of classifier features against the original's images of the same preservation prompts. T5 roles: `eot` is
the `</s>` T5 appends, `last` the last content token, `key` the pack phrase's pieces, `all` every non-pad position.
The pooled edit changes `time_text_embed.text_embedder.linear_1` (CLIP's pooled vector); `off` leaves it as is, so
only `context_embedder` (the T5 path) is edited.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from trce_ray.models import load_pipeline
from trce_ray.models.erased import load_erased
from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline
from trce_ray.toy.bench import SET_NAMES, classify, generate, prompt_sets, score
from trce_ray.toy.demo import ToyDemoConfig, format_table
from trce_ray.toy.rows import stage1_config
from trce_ray.workflow import run_erasure


def erased(base, colour: str, tokens: list[str], pooled: bool, eta: float, folder: str, pipeline: str | None = None):
    """Stage 1 alone on the FLUX toy (or the FLUX pipeline folder `pipeline`) into `folder`; the erased pipeline."""
    demo = ToyDemoConfig(
        family="flux", target=colour, device="cpu", stage1={"tokens": tokens, "pooled": pooled, "eta": eta}
    )
    cfg = stage1_config(demo)
    if pipeline:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": pipeline})})
    run_erasure(cfg, folder, ("text",), progress=False, pipe=base)
    return load_erased(folder, device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--colours", nargs="+", default=["red"])
    ap.add_argument("--tokens", nargs="+", default=["eot", "last", "key", "all", "eot,last"], help="role sets")
    ap.add_argument("--pooled", nargs="+", choices=["on", "off"], default=["on", "off"])
    ap.add_argument("--eta", type=float, default=1.0, help="normalised convention")
    ap.add_argument("--n", type=int, default=24, help="direct and held-out paraphrase prompts")
    ap.add_argument("--per-colour", type=int, default=6, help="preservation prompts per other colour")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pipeline", help="a FLUX toy pipeline folder (default: the shipped one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = load_pipeline(args.pipeline) if args.pipeline else load_toy_pipeline(family="flux")
    classifier = load_toy_classifier()
    for colour in args.colours:
        sets = prompt_sets(colour, args.n, args.n, args.per_colour, args.seed)

        def measure(pipe, reference=None, sets=sets, colour=colour):
            preds = {s: classify(classifier, generate(pipe, sets[s])) for s in SET_NAMES}
            return score(colour, sets, preds, reference), preds["preservation"]["features"]

        rows = {}
        rows["original"], reference = measure(base)
        for tokens in args.tokens:
            for pooled in args.pooled:
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    roles = tokens.split(",")
                    pipe = erased(base, colour, roles, pooled == "on", args.eta, f"{tmp}/out", args.pipeline)
                    rows[f"{tokens} p={pooled}"], _ = measure(pipe, reference)
                print(f"{colour} {tokens} pooled {pooled}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"FLUX toy, normalised eta {args.eta:g}, seed {args.seed}")
        print(format_table(rows, colour), flush=True)


if __name__ == "__main__":
    main()
