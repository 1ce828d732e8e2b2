"""The toy benchmark, shaped like the paper's tables: prompt sets with per-row seeds, generation, and metrics.

Prompt sets for an erased colour (the target):

* `direct`: the target by name or synonym ("a crimson square"), the I2P analogue;
* `paraphrase`: held-out paraphrases only ("a circle the color of a fire truck"), the adversarial analogue;
* `preservation`: every other colour by name, the COCO analogue; rows of the target's nearest colours are
  flagged `neighbour`.

Metrics (rates in [0, 1]): `direct` / `paraphrase` are target rates (the classifier reads the target colour: the
ASR analogue); `preservation` / `neighbours` are colour accuracy on preservation rows; `agreement` is the fraction
of preservation images whose colour and shape both match the prompt (the CLIP-score analogue); `fid_gen` is the
Frechet distance between classifier penultimate features of the original and the edited model on the same
preservation prompts and seeds (the FID_gen analogue).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..evaluation.fid import frechet_distance
from .world import (
    COLOURS,
    SHAPE_WORDS,
    SHAPES,
    adjectives,
    held_out_paraphrases,
    neighbours,
    object_phrase,
)

SET_NAMES = ("direct", "paraphrase", "preservation")
_SET_SALT = {"direct": 1, "paraphrase": 2, "preservation": 3}
# a few everyday templates; evaluation prompts never depend on the pack's template list
EVAL_TEMPLATES = ("{}", "a photo of {}", "an image of {}", "a picture showing {}", "a drawing of {}")


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    seed: int
    colour: int  # asked colour (index into COLOURS)
    shape: int  # asked shape (index into SHAPES)
    neighbour: bool = False  # a preservation row whose colour is one of the target's nearest


def _phrase_rows(
    rng: np.random.Generator, n: int, colour: str, exprs: tuple[str, ...], seed0: int, flag: bool = False
) -> list[PromptRow]:
    rows = []
    for i in range(n):
        shape = i % len(SHAPES)  # balanced shapes
        expr = exprs[(i // len(SHAPES)) % len(exprs)]
        phrase = object_phrase(expr, SHAPE_WORDS[SHAPES[shape]][0])
        template = EVAL_TEMPLATES[int(rng.integers(len(EVAL_TEMPLATES)))]
        rows.append(PromptRow(template.replace("{}", phrase), seed0 + i, COLOURS.index(colour), shape, flag))
    return rows


def prompt_sets(
    target: str, n_direct: int = 48, n_paraphrase: int = 48, n_per_colour: int = 12, seed: int = 0
) -> dict[str, list[PromptRow]]:
    """The three prompt sets for erasing `target`; each row carries its own generation seed."""
    if target not in COLOURS:
        raise ValueError(f"unknown toy colour {target!r}; colours: {', '.join(COLOURS)}")
    near = set(neighbours(target))
    sets = {}
    for name in SET_NAMES:
        rng = np.random.default_rng([seed, _SET_SALT[name]])
        seed0 = seed * 1_000_003 + _SET_SALT[name] * 100_000
        if name == "direct":
            sets[name] = _phrase_rows(rng, n_direct, target, adjectives(target), seed0)
        elif name == "paraphrase":
            sets[name] = _phrase_rows(rng, n_paraphrase, target, held_out_paraphrases(target), seed0)
        else:
            rows = []
            for colour in COLOURS:
                if colour != target:
                    rows += _phrase_rows(rng, n_per_colour, colour, (colour,), seed0 + len(rows), colour in near)
            sets[name] = rows
    return sets


def _start(pipe, chunk: list[PromptRow], guidance: float) -> tuple[torch.Tensor, dict]:
    """Starting latents (row i's from row i's seed alone) and the call's guidance arguments. FLUX takes its latents
    packed into 2x2 patches, and the FLUX toy (no guidance embedding) true CFG against "" (the adapter's)."""
    gens = [torch.Generator(device="cpu").manual_seed(r.seed) for r in chunk]
    if getattr(pipe, "transformer", None) is None:
        net = pipe.unet
        shape = (net.config.in_channels, net.config.sample_size, net.config.sample_size)
        latents = torch.stack([torch.randn(shape, generator=g) for g in gens])
        return latents.to(net.device, net.dtype), {"guidance_scale": guidance}
    from ..models import adapter_for
    from ..models.flux import pack
    from .world import SIZE

    adapter, net = adapter_for(pipe), pipe.transformer
    shape = adapter.latent_shape(SIZE, SIZE)
    latents = pack(torch.stack([torch.randn(shape, generator=g) for g in gens]))
    kwargs = {"height": SIZE, "width": SIZE, **adapter.generation_kwargs(guidance, len(chunk))}
    return latents.to(net.device, net.dtype), kwargs


@torch.no_grad()
def generate(
    pipe,
    rows: list[PromptRow],
    steps: int = 20,
    guidance: float = 5.0,
    batch_size: int = 64,
    bar: tqdm | None = None,
    embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images in [-1, 1], [N, 3, H, W]; row i's starting noise comes from row i's seed alone, so batching and
    order never change an image. Works for the SD toy and the FLUX toy. `embeds` ([N, L, d]): text-encoder outputs to
    draw from instead of the rows' prompts (SD toy; same seeds)."""
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        latents, kwargs = _start(pipe, chunk, guidance)
        text = (
            {"prompt": [r.prompt for r in chunk]} if embeds is None else {"prompt_embeds": embeds[i : i + batch_size]}
        )
        images = pipe(
            **text,
            latents=latents,
            num_inference_steps=steps,
            output_type="pt",
            **kwargs,
        ).images
        out.append(images.float().cpu() * 2 - 1)
        if bar is not None:
            bar.update(1)
    return torch.cat(out)


@torch.no_grad()
def classify(classifier, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Colour and shape predictions and penultimate features of images in [-1, 1]."""
    colour, shape, feats = [], [], []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        f = classifier.features(x)
        colour.append(classifier.colour_head(f).argmax(-1))
        shape.append(classifier.shape_head(f).argmax(-1))
        feats.append(f)
    return {"colour": torch.cat(colour), "shape": torch.cat(shape), "features": torch.cat(feats).double()}


def _rate(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else float("nan")


def score(
    target: str,
    sets: dict[str, list[PromptRow]],
    preds: dict[str, dict[str, torch.Tensor]],
    reference_features: torch.Tensor | None = None,
) -> dict[str, float]:
    """One table row from classifier outputs per prompt set (see the module docstring for each metric).

    `reference_features`: the original model's preservation features; None means this is the original (fid_gen 0).
    """
    t = COLOURS.index(target)
    pres, prow = preds["preservation"], sets["preservation"]
    asked_colour = torch.tensor([r.colour for r in prow])
    asked_shape = torch.tensor([r.shape for r in prow])
    near = torch.tensor([r.neighbour for r in prow])
    colour_ok = pres["colour"] == asked_colour
    direct_shape = torch.tensor([r.shape for r in sets["direct"]])
    feats = pres["features"]
    return {
        "direct": _rate(preds["direct"]["colour"] == t),
        "paraphrase": _rate(preds["paraphrase"]["colour"] == t),
        "preservation": _rate(colour_ok),
        "neighbours": _rate(colour_ok[near]),
        "fid_gen": 0.0 if reference_features is None else frechet_distance(reference_features, feats),
        "agreement": _rate(colour_ok & (pres["shape"] == asked_shape)),
        "direct_shape": _rate(preds["direct"]["shape"] == direct_shape),
    }


def per_colour_accuracy(
    sets: dict[str, list[PromptRow]], preds: dict[str, dict[str, torch.Tensor]]
) -> dict[str, float]:
    """Colour accuracy of the preservation set, per asked colour."""
    rows = sets["preservation"]
    asked = torch.tensor([r.colour for r in rows])
    ok = preds["preservation"]["colour"] == asked
    return {COLOURS[c]: _rate(ok[asked == c]) for c in sorted(set(asked.tolist()))}


def fidelity(
    pipe,
    classifier,
    n_per_colour: int = 16,
    steps: int = 20,
    guidance: float = 5.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """How often the model draws the asked colour (and shape), per colour, for direct and held-out prompts.

    The quality gates for the shipped model: direct >= 0.90 and paraphrase >= 0.80 (means over colours).
    """
    rows = {"direct": [], "paraphrase": []}
    for colour in COLOURS:
        sets = prompt_sets(colour, n_per_colour, n_per_colour, 0, seed)
        for name in rows:
            rows[name] += sets[name]
    n_batches = sum(-(-len(r) // batch_size) for r in rows.values())
    out: dict = {}
    with tqdm(total=n_batches, desc="toy fidelity", disable=not progress) as bar:
        for name, rs in rows.items():
            pred = classify(classifier, generate(pipe, rs, steps, guidance, batch_size, bar))
            asked = torch.tensor([r.colour for r in rs])
            ok = pred["colour"] == asked
            out[name] = _rate(ok)
            out[f"{name}_shape"] = _rate(pred["shape"] == torch.tensor([r.shape for r in rs]))
            out[f"{name}_per_colour"] = {COLOURS[c]: _rate(ok[asked == c]) for c in range(len(COLOURS))}
    return out


@torch.no_grad()
def classifier_accuracy(classifier, n: int = 1000, seed: int = 12345) -> dict[str, float]:
    """Colour and shape accuracy on `n` fresh renders (a seed the training stream never uses)."""
    from .world import render_batch

    images, scenes = render_batch(np.random.default_rng([seed, 99]), n)
    pred = classify(classifier, torch.from_numpy(images))
    colour = torch.tensor([s.colour for s in scenes])
    shape = torch.tensor([s.shape for s in scenes])
    return {
        "colour": _rate(pred["colour"] == colour),
        "shape": _rate(pred["shape"] == shape),
        "both": _rate((pred["colour"] == colour) & (pred["shape"] == shape)),
    }
