"""Several toy colours erased at once (TRCE(T) and TRCE(T+V)), against the original model:

    PYTHONPATH=. OMP_NUM_THREADS=1 python -u bench/toy_multiconcept.py [--sets red red,blue ...] [--stages text,visual]

Each set is erased with the demo's stage-1 settings (toy packs, one per colour, each mapped to gray, in one joint
solve) and preservation prompts of the colours kept (the demo's per-colour preservation files, merged, without any
line naming an erased colour). TRCE(T+V) adds the demo's stage 2 on top: its malicious trajectories spread over the
erase prompts of every erased colour (each with its own gray anchor in f_safe), `cache.malicious_samples` scaled with
the number of colours (`--samples-per-colour`, the demo's 100 for one). Per erased colour: the rate at which the
classifier reads that colour on direct prompts (name, synonyms) and on held-out paraphrases; for the colours kept:
colour accuracy; FID_gen: Frechet distance of the classifier's features, original vs erased, on the kept-colour
prompts. Every row uses the same prompts and seeds as the original row.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import torch

from trce_ray.config import TRCEConfig
from trce_ray.config.base import validate
from trce_ray.evaluation.fid import frechet_distance
from trce_ray.models.erased import load_erased
from trce_ray.stage2.run import run_stage2
from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline
from trce_ray.toy.bench import classify, generate, prompt_sets
from trce_ray.toy.demo import ToyDemoConfig
from trce_ray.toy.packs import pack_name, preserve_file
from trce_ray.toy.rows import stage2_config
from trce_ray.toy.world import COLOURS, pack_words
from trce_ray.workflow import run_erasure


def kept_preservation(erased: list[str], folder: Path, drop: list[str] = ()) -> str:
    """The demo's preservation files of the erased colours, merged, without a line naming any erased colour (or any
    colour of `drop`, which stays kept and measured: issue 13's test of whether a kept neighbour pulls back)."""
    words = [w.lower() for c in [*erased, *drop] for w in pack_words(c)]
    lines = []
    for colour in erased:
        for line in preserve_file(colour).read_text().splitlines():
            if line not in lines and not any(w in line.lower() for w in words):
                lines.append(line)
    path = folder / f"preserve-{'-'.join(erased)}.txt"
    path.write_text("\n".join(lines[:400]) + "\n")
    return str(path)


def erase(
    erased: list[str], stages: list[str], samples: int, folder: Path, stage1: dict, drop: list[str] = ()
) -> dict[str, object]:
    """The erased pipelines of one set: TRCE(T) and, with "visual" in `stages`, TRCE(T+V) on top of it."""
    demo = ToyDemoConfig(target=erased[0], device="cpu", stage1=stage1)
    cfg = stage2_config(demo, folder / "cache").model_dump(mode="json")
    cfg["stage1"].update(concept=None, concepts=[pack_name(c) for c in erased])
    cfg["stage1"]["preserve_prompts"] = kept_preservation(erased, folder, drop)
    cfg["cache"]["malicious_samples"] = samples * len(erased)
    cfg = validate(TRCEConfig, cfg)
    out = folder / "-".join(erased)
    run_erasure(cfg, out / "T", ("text",), progress=False)
    models = {"TRCE(T)": load_erased(str(out / "T"), device="cpu")}
    if "visual" in stages:
        run_stage2(cfg, out / "TV", out / "T", progress=True)
        models["TRCE(T+V)"] = load_erased(str(out / "TV"), device="cpu")
    return models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["red", "red,blue", "red,blue,green,yellow"])
    ap.add_argument("--per-colour", type=int, default=24, help="direct and paraphrase prompts per erased colour")
    ap.add_argument("--stages", default="text", help="text, or text,visual for TRCE(T+V) rows as well")
    ap.add_argument("--samples-per-colour", type=int, default=100, help="stage 2's malicious trajectories per colour")
    ap.add_argument("--tokens", nargs="+", default=None, help="stage-1 token roles (default: the demo's, [eot])")
    ap.add_argument("--eta", type=float, default=None, help="stage-1 eta (default: the demo's)")
    ap.add_argument(
        "--eta-per-concept",
        action="store_true",
        help="divide --eta by the number of colours erased: in the normalised convention the erase term is a mean "
        "over every concept's rows, so this keeps each concept's weight against preservation as when erased alone",
    )
    ap.add_argument(
        "--drop-preserve",
        nargs="+",
        default=[],
        help="kept colours whose lines also leave the preservation prompts (still measured as kept)",
    )
    args = ap.parse_args()
    stage1 = {k: v for k, v in (("tokens", args.tokens), ("eta", args.eta)) if v is not None}
    if args.eta_per_concept and args.eta is None:
        ap.error("--eta-per-concept needs --eta")
    torch.set_num_threads(1)
    pipe, classifier = load_toy_pipeline(), load_toy_classifier()
    folder = Path(tempfile.mkdtemp(prefix="trce-toy-multi-"))
    every = sorted({c for s in args.sets for c in s.split(",")}, key=COLOURS.index)
    sets = {c: prompt_sets(c, args.per_colour, args.per_colour, 6) for c in every}
    # 6 rows of every colour: one preservation set covers all but its target, a second one covers that target
    first, second = (prompt_sets(c, 0, 0, 6)["preservation"] for c in COLOURS[:2])
    kept_rows = first + [r for r in second if r.colour == 0]

    def rates(model, erased: list[str], reference: torch.Tensor | None) -> tuple[dict[str, float], torch.Tensor]:
        out = {}
        for c in erased:
            for name in ("direct", "paraphrase"):
                pred = classify(classifier, generate(model, sets[c][name]))["colour"]
                out[f"{c} {name}"] = float((pred == COLOURS.index(c)).float().mean())
        rows = [r for r in kept_rows if COLOURS[r.colour] not in erased]
        got = classify(classifier, generate(model, rows))
        truth = torch.tensor([r.colour for r in rows])
        out["kept"] = float((got["colour"] == truth).float().mean())
        misses = Counter(COLOURS[int(c)] for c in truth[got["colour"] != truth])
        out["misses"] = ", ".join(f"{c} {n}" for c, n in sorted(misses.items(), key=lambda kv: COLOURS.index(kv[0])))
        out["fid"] = 0.0 if reference is None else frechet_distance(reference, got["features"])
        return out, got["features"]

    print("| erased at once | model | " + " | ".join(f"{c} direct / paraphrase" for c in every), end="")
    print(" | kept colours | kept misread | FID_gen |\n|---|---|" + "---|" * len(every) + "---|---|---|", flush=True)
    for s in args.sets:
        erased = s.split(",")
        before, reference = rates(pipe, erased, None)
        results = [("original", before)]
        per_set = {**stage1, "eta": args.eta / len(erased)} if args.eta_per_concept else stage1
        models = erase(erased, args.stages.split(","), args.samples_per_colour, folder, per_set, args.drop_preserve)
        for label, model in models.items():
            results.append((label, rates(model, erased, reference)[0]))
        for label, r in results:
            cells = [
                f"{100 * r[f'{c} direct']:.0f}% / {100 * r[f'{c} paraphrase']:.0f}%" if c in erased else ""
                for c in every
            ]
            line = f"| {len(erased)}: {s} | {label} | " + " | ".join(cells)
            print(line + f" | {100 * r['kept']:.1f}% | {r['misses'] or '-'} | {r['fid']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
