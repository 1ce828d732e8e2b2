"""Which text path carries the colour to the FLUX toy: T5's tokens or CLIP's pooled vector?

    PYTHONPATH=. OMP_NUM_THREADS=1 python -u bench/toy_flux_paths.py [--colours red blue] [--n 24]

FluxPipeline reads `prompt` with CLIP (the pooled vector, into `time_text_embed`) and `prompt_2` with T5 (the token
states, into `context_embedder` and joint attention). Giving the two encoders different prompts is an ideal edit of
one path: each of the colour's prompts (direct: its pack words; paraphrase: held-out paraphrases) is drawn with one
or both paths reading its gray twin (same template and shape, the colour expression replaced by "gray"). The toy
classifier reads the colour of each image; the table gives how often it is the asked colour (the target rate) and
how often gray. Same seeds, 20 Euler steps, true CFG 5 against "" (the demo's sampling).
"""

from __future__ import annotations

import argparse

import torch

from trce_ray.models import load_pipeline
from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline
from trce_ray.toy.bench import EVAL_TEMPLATES, PromptRow, _start, classify
from trce_ray.toy.world import COLOURS, SAFE_COLOUR, SHAPE_WORDS, SHAPES, adjectives, held_out_paraphrases
from trce_ray.toy.world import object_phrase as phrase

CASES = {  # (CLIP / pooled reads, T5 reads)
    "both asked colour": ("asked", "asked"),
    "pooled -> gray": ("twin", "asked"),
    "T5 -> gray": ("asked", "twin"),
    "both gray": ("twin", "twin"),
}


def pairs(colour: str, exprs: tuple[str, ...], n: int, seed0: int) -> list[tuple[PromptRow, str]]:
    """n prompts of `colour` (balanced shapes, cycling expressions and templates) and their gray twins."""
    out = []
    for i in range(n):
        shape = i % len(SHAPES)
        expr = exprs[(i // len(SHAPES)) % len(exprs)]
        template = EVAL_TEMPLATES[i % len(EVAL_TEMPLATES)]
        word = SHAPE_WORDS[SHAPES[shape]][0]
        row = PromptRow(template.replace("{}", phrase(expr, word)), seed0 + i, COLOURS.index(colour), shape)
        out.append((row, template.replace("{}", phrase(SAFE_COLOUR, word))))
    return out


@torch.no_grad()
def draw(pipe, items: list[tuple[PromptRow, str]], clip: str, t5: str, steps: int = 20) -> torch.Tensor:
    rows = [r for r, _ in items]
    pick = {"asked": [r.prompt for r, _ in items], "twin": [t for _, t in items]}
    latents, kwargs = _start(pipe, rows, 5.0)
    images = pipe(
        prompt=pick[clip], prompt_2=pick[t5], latents=latents, num_inference_steps=steps, output_type="pt", **kwargs
    ).images
    return images.float() * 2 - 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--colours", nargs="+", default=["red", "blue"])
    ap.add_argument("--n", type=int, default=24, help="direct and paraphrase prompts per colour")
    ap.add_argument("--pipeline", help="a FLUX toy pipeline folder (default: the shipped one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.pipeline) if args.pipeline else load_toy_pipeline(family="flux")
    classifier = load_toy_classifier()
    gray = COLOURS.index(SAFE_COLOUR)
    print("| colour | prompts | " + " | ".join(CASES) + " |")
    print("|---|---|" + "---|" * len(CASES))
    for colour in args.colours:
        for kind, exprs, seed0 in (
            ("direct", adjectives(colour), 10_000),
            ("paraphrase", held_out_paraphrases(colour), 20_000),
        ):
            items = pairs(colour, exprs, args.n, seed0)
            cells = []
            for clip, t5 in CASES.values():
                got = classify(classifier, draw(pipe, items, clip, t5))["colour"]
                asked = float((got == COLOURS.index(colour)).float().mean())
                cells.append(f"{100 * asked:.0f} / {100 * float((got == gray).float().mean()):.0f}")
            print(f"| {colour} | {kind} | " + " | ".join(cells) + " |", flush=True)
    print("cells: asked colour drawn % / gray drawn %")


if __name__ == "__main__":
    main()
