"""Shape erasure on the toy world (its "identity" axis): erase the triangle, keep the colours and the other shapes.

    PYTHONPATH=. OMP_NUM_THREADS=1 python -u bench/toy_shape.py [--shape triangle] [--anchor circle] [--seeds 0 1 2]

The pack maps every colour expression of the pack vocabulary on every word for the shape ("a crimson wedge") to the
same expression on the anchor shape ("a crimson circle"), and the colourless shape to the colourless anchor: the
colour is the part to keep, as "a person wearing clothes" keeps the person. The preservation prompts are the other
shapes with every colour, in the pack templates (no line names the erased shape). Rows: the original model, TRCE(T)
(the demo's stage-1 settings: `normalised`, eta 1, first [EoT]) and TRCE(T+V) (the demo's stage-2 settings on top).

Measured per generation seed, on prompts the pack never used (the evaluation templates of toy/bench.py):
- `shape direct`: how often the classifier reads the erased shape when asked for it by its name;
- `shape synonym`: the same, asked by its other words ("wedge");
- `anchor drawn instead`: how often the anchor shape is drawn on those prompts;
- `colour kept on erased-shape prompts`: the asked colour is still drawn on those prompts (colour must survive);
- `kept shapes`: shape accuracy on prompts for every other shape; `kept colours`: colour accuracy there;
- `FID_gen`: Frechet distance of the classifier's features, original vs erased model, on the kept-shape prompts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from trce_ray.config import load_config
from trce_ray.evaluation.fid import frechet_distance
from trce_ray.models.erased import load_erased
from trce_ray.stage2.run import run_stage2
from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline
from trce_ray.toy.bench import EVAL_TEMPLATES, PromptRow, classify, generate
from trce_ray.toy.demo import ToyDemoConfig
from trce_ray.toy.packs import object_prompts
from trce_ray.toy.rows import TOY_TRAIN
from trce_ray.toy.world import COLOURS, SHAPE_WORDS, SHAPES, object_phrase, pack_words
from trce_ray.workflow import run_erasure


def write_pack(shape: str, anchor: str, folder: Path) -> Path:
    phrases = [{"phrase": object_phrase(None, w), "anchor": object_phrase(None, SHAPE_WORDS[anchor][0])}
               for w in SHAPE_WORDS[shape]]  # fmt: skip
    for colour in COLOURS:
        for expr in pack_words(colour):
            for word in SHAPE_WORDS[shape]:
                phrases.append(
                    {"phrase": object_phrase(expr, word), "anchor": object_phrase(expr, SHAPE_WORDS[anchor][0])}
                )
    path = folder / f"toy-{shape}.yaml"
    body = {"name": f"toy-{shape}", "description": f"toy world: the {shape} shape, mapped to {anchor}"}
    path.write_text(yaml.safe_dump({**body, "phrases": phrases}, sort_keys=False, width=119))
    return path


def write_preservation(shape: str, folder: Path, n: int = 400, seed: int = 0) -> Path:
    rng = np.random.default_rng([seed, SHAPES.index(shape), 7])
    lines = object_prompts(rng, COLOURS, [s for s in SHAPES if s != shape], n)
    path = folder / f"preserve-{shape}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def eval_rows(shape: str, words: tuple[str, ...], n: int, seed: int, salt: int) -> list[PromptRow]:
    """n prompts for `shape` named by `words`, colours balanced, evaluation templates, one seed per row."""
    rng = np.random.default_rng([seed, salt])
    rows = []
    for i in range(n):
        colour = COLOURS[i % len(COLOURS)]
        phrase = object_phrase(colour, words[(i // len(COLOURS)) % len(words)])
        template = EVAL_TEMPLATES[int(rng.integers(len(EVAL_TEMPLATES)))]
        row_seed = seed * 1_000_003 + salt * 100_000 + i
        rows.append(PromptRow(template.replace("{}", phrase), row_seed, COLOURS.index(colour), SHAPES.index(shape)))
    return rows


def measure(pipe, classifier, sets: dict, shape: str, anchor: str, reference: torch.Tensor | None) -> dict:
    got = {name: classify(classifier, generate(pipe, rows)) for name, rows in sets.items()}

    def rate(name, key, wanted):
        return float((got[name][key] == torch.tensor(wanted)).float().mean())

    s, a = SHAPES.index(shape), SHAPES.index(anchor)
    kept = sets["kept"]
    out = {
        "shape direct": rate("direct", "shape", [s] * len(sets["direct"])),
        "shape synonym": rate("synonym", "shape", [s] * len(sets["synonym"])),
        "anchor drawn instead": rate("direct", "shape", [a] * len(sets["direct"])) / 2
        + rate("synonym", "shape", [a] * len(sets["synonym"])) / 2,
        "colour kept on erased-shape prompts": rate("direct", "colour", [r.colour for r in sets["direct"]]) / 2
        + rate("synonym", "colour", [r.colour for r in sets["synonym"]]) / 2,
        "kept shapes": rate("kept", "shape", [r.shape for r in kept]),
        "kept colours": rate("kept", "colour", [r.colour for r in kept]),
    }
    feats = got["kept"]["features"]
    out["FID_gen"] = 0.0 if reference is None else frechet_distance(reference, feats)
    return out, feats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="triangle", choices=SHAPES)
    ap.add_argument("--anchor", default="circle", choices=SHAPES)
    ap.add_argument("--n", type=int, default=48, help="prompts per set")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="generation seeds (prompt rows)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="trce-toy-shape-"))
    demo = ToyDemoConfig(device="cpu")
    overrides = {
        "model.path": "toy",
        "model.device": "cpu",
        "seed": demo.seed,
        "stage1.concept": str(write_pack(args.shape, args.anchor, folder)),
        "stage1.preserve_prompts": str(write_preservation(args.shape, folder)),
        **{f"stage1.{k}": v for k, v in demo.stage1.items()},
        "cache.steps": demo.steps,
        "cache.guidance": demo.guidance,
        "cache.root": str(folder / "cache"),
        **{f"train.{k}": v for k, v in TOY_TRAIN.items()},
    }
    cfg = load_config(None, overrides)
    run_erasure(cfg, folder / "T", ("text",), progress=False)
    run_stage2(cfg, folder / "TV", folder / "T", progress=True)
    models = {
        "original": load_toy_pipeline(),
        "TRCE(T)": load_erased(str(folder / "T"), device="cpu"),
        "TRCE(T+V)": load_erased(str(folder / "TV"), device="cpu"),
    }
    classifier = load_toy_classifier()
    name, synonyms = SHAPE_WORDS[args.shape][0], SHAPE_WORDS[args.shape][1:]
    results: dict[str, list[dict]] = {m: [] for m in models}
    for seed in args.seeds:
        sets = {
            "direct": eval_rows(args.shape, (name,), args.n, seed, 11),
            "synonym": eval_rows(args.shape, synonyms, args.n, seed, 12),
            "kept": [r for s in SHAPES if s != args.shape for r in eval_rows(s, (s,), args.n // 3, seed, 13)],
        }
        reference = None
        for label, pipe in models.items():
            out, feats = measure(pipe, classifier, sets, args.shape, args.anchor, reference)
            reference = feats if label == "original" else reference
            results[label].append(out)
            print(f"seed {seed} {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()), flush=True)
    keys = list(results["original"][0])
    print(f"\nErase {args.shape} (anchor {args.anchor}); mean ± spread (max - min) over seeds {args.seeds}, "
          f"{args.n} prompts per set\n")  # fmt: skip
    print("| model | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for label, runs in results.items():
        cells = []
        for k in keys:
            vals = [r[k] for r in runs]
            spread = max(vals) - min(vals)
            mean = statistics.fmean(vals)
            cells.append(f"{mean:.2f} ± {spread:.2f}" if k == "FID_gen" else f"{100 * mean:.1f}% ± {100 * spread:.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
