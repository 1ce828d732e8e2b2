"""Stage-1 preservation weight on the toy world: erasure and preservation for several eta, original as baseline.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/toy_eta.py --target red --eta 0.01 0.1 1 10
    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/toy_eta.py --target red --convention normalised --eta 0.01 0.1 1 10

eta is read in `--convention` (default: stage1.convention's default; docs/stage1.md), with that convention's
preserved tokens.

Every row uses the same prompts and seeds as the original row (24 direct, 24 held-out paraphrase and 6 prompts
per other colour), so differences are the edit's alone. Prints the Table-1-style rows.
"""

from __future__ import annotations

import argparse

import torch

from trce_ray.artifacts import apply_delta
from trce_ray.config import Stage1Config
from trce_ray.models import adapter_for
from trce_ray.stage1.run import compute_stage1, stage1_prompts
from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline
from trce_ray.toy.bench import SET_NAMES, classify, generate, prompt_sets, score
from trce_ray.toy.demo import ToyDemoConfig, format_table
from trce_ray.toy.rows import stage1_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="red")
    ap.add_argument("--eta", type=float, nargs="+", default=[0.01, 0.1, 1.0, 10.0])
    ap.add_argument("--tokens", nargs="+", default=["eot"])
    ap.add_argument("--convention", default=Stage1Config.model_fields["convention"].default)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe, classifier = load_toy_pipeline(), load_toy_classifier()
    sets = prompt_sets(args.target, 24, 24, 6)

    def measure(reference=None):
        preds = {s: classify(classifier, generate(pipe, sets[s])) for s in SET_NAMES}
        return score(args.target, sets, preds, reference), preds["preservation"]["features"]

    rows = {}
    rows["original"], reference = measure()
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    for eta in args.eta:
        s1 = {"eta": eta, "tokens": args.tokens, "convention": args.convention}
        demo = ToyDemoConfig(target=args.target, device="cpu", stage1=s1)
        cfg = stage1_config(demo)
        pairs, keep = stage1_prompts(cfg.stage1)
        apply_delta(pipe.unet, compute_stage1(adapter_for(pipe), pairs, keep, cfg.stage1).delta)
        rows[f"eta={eta:g}"], _ = measure(reference)
        pipe.unet.load_state_dict(original)
    print(f"convention {args.convention}, preserved tokens {cfg.stage1.preserve_tokens}")
    print(format_table(rows, args.target))


if __name__ == "__main__":
    main()
