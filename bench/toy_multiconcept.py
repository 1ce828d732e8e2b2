"""Several toy colours erased at once by one stage-1 solve (TRCE(T)), against the original model:

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/toy_multiconcept.py [--sets red red,blue red,blue,green,yellow]

Each set is erased with the demo's stage-1 settings (toy packs, one per colour, each mapped to gray) and
preservation prompts of the colours kept (the demo's per-colour preservation files, merged, without any line naming
an erased colour). Per erased colour: the rate at which the classifier reads that colour on direct prompts (name,
synonyms) and on held-out paraphrases; for the colours kept: colour accuracy. Every row uses the same prompts and
seeds as the original row.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from trce_ray.artifacts import apply_delta
from trce_ray.config import Stage1Config
from trce_ray.models import adapter_for
from trce_ray.stage1.run import compute_stage1, stage1_prompts
from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline
from trce_ray.toy.bench import classify, generate, prompt_sets
from trce_ray.toy.demo import ToyDemoConfig
from trce_ray.toy.packs import pack_name, preserve_file
from trce_ray.toy.rows import stage1_config
from trce_ray.toy.world import COLOURS, pack_words


def kept_preservation(erased: list[str], folder: Path) -> str:
    """The demo's preservation files of the erased colours, merged, without a line naming any erased colour."""
    words = [w.lower() for c in erased for w in pack_words(c)]
    lines = []
    for colour in erased:
        for line in preserve_file(colour).read_text().splitlines():
            if line not in lines and not any(w in line.lower() for w in words):
                lines.append(line)
    path = folder / f"preserve-{'-'.join(erased)}.txt"
    path.write_text("\n".join(lines[:400]) + "\n")
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["red", "red,blue", "red,blue,green,yellow"])
    ap.add_argument("--per-colour", type=int, default=24, help="direct and paraphrase prompts per erased colour")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe, classifier = load_toy_pipeline(), load_toy_classifier()
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    folder = Path(tempfile.mkdtemp(prefix="trce-toy-multi-"))
    every = sorted({c for s in args.sets for c in s.split(",")}, key=COLOURS.index)
    sets = {c: prompt_sets(c, args.per_colour, args.per_colour, 6) for c in every}
    # 6 rows of every colour: one preservation set covers all but its target, a second one covers that target
    first, second = (prompt_sets(c, 0, 0, 6)["preservation"] for c in COLOURS[:2])
    kept_rows = first + [r for r in second if r.colour == 0]

    def rates(erased: list[str]) -> dict[str, float]:
        out = {}
        for c in erased:
            for name in ("direct", "paraphrase"):
                pred = classify(classifier, generate(pipe, sets[c][name]))["colour"]
                out[f"{c} {name}"] = float((pred == COLOURS.index(c)).float().mean())
        rows = [r for r in kept_rows if COLOURS[r.colour] not in erased]
        pred = classify(classifier, generate(pipe, rows))["colour"]
        out["kept"] = float((pred == torch.tensor([r.colour for r in rows])).float().mean())
        return out

    print("| erased at once | model | " + " | ".join(f"{c} direct / paraphrase" for c in every) + " | kept colours |")
    print("|---|---|" + "---|" * len(every) + "---|")
    for s in args.sets:
        erased = s.split(",")
        demo = ToyDemoConfig(target=erased[0], device="cpu")
        base = stage1_config(demo).stage1.model_dump()
        base.update(concept=None, concepts=[pack_name(c) for c in erased])
        s1 = Stage1Config(**{**base, "preserve_prompts": kept_preservation(erased, folder)})
        pipe.unet.load_state_dict(original)
        before = rates(erased)
        pairs, keep = stage1_prompts(s1)
        apply_delta(pipe.unet, compute_stage1(adapter_for(pipe), pairs, keep, s1).delta)
        after = rates(erased)
        pipe.unet.load_state_dict(original)
        for label, r in (("original", before), (f"TRCE(T), {len(pairs)} erase prompts", after)):
            cells = [
                f"{100 * r[f'{c} direct']:.0f}% / {100 * r[f'{c} paraphrase']:.0f}%" if c in erased else ""
                for c in every
            ]
            print(f"| {len(erased)}: {s} | {label} | " + " | ".join(cells) + f" | {100 * r['kept']:.1f}% |")


if __name__ == "__main__":
    main()
