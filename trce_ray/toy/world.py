"""The toy world: one coloured shape on a dark background, rendered at 32x32, and captions that describe it.

Colours are the erasable attributes. Each colour has a name, synonyms and indirect paraphrases ("the color of a
ripe tomato"). The vocabulary is split in two:

* `pack_words(colour)`: what erasure packs may use (name, synonyms, two paraphrases);
* `held_out_paraphrases(colour)`: two more paraphrases the model is trained on but that only evaluation uses, the
  analogue of the paper's adversarial prompts. A test checks that none of them appears in any toy pack.

Gray is the safe anchor: toy packs map "a red circle" to "a gray circle", as the paper maps "nudity" to "a person
wearing clothes". Everything here is deterministic given a `numpy.random.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 32  # image side in pixels (32 vs 64 measured in bench/toy_resolution.py)
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down, so edges are anti-aliased

# name: (RGB base, synonyms, pack paraphrases, held-out paraphrases)
_COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "red": (
        (205, 30, 35),
        ("crimson", "scarlet"),
        ("the color of a ripe tomato", "the color of fresh blood"),
        ("the color of a fire truck", "the color of a strawberry"),
    ),
    "orange": (
        (240, 135, 20),
        ("tangerine", "amber"),
        ("the color of a pumpkin", "the color of a carrot"),
        ("the color of a traffic cone", "the color of a goldfish"),
    ),
    "yellow": (
        (235, 220, 45),
        ("golden", "lemon"),
        ("the color of a banana", "the color of the sun"),
        ("the color of a school bus", "the color of a sunflower"),
    ),
    "green": (
        (45, 170, 60),
        ("emerald", "lime"),
        ("the color of grass", "the color of a leaf"),
        ("the color of a frog", "the color of fresh peas"),
    ),
    "blue": (
        (40, 80, 225),
        ("azure", "navy"),
        ("the color of the sky", "the color of the ocean"),
        ("the color of a sapphire", "the color of blueberries"),
    ),
    "purple": (
        (135, 45, 185),
        ("violet", "plum"),
        ("the color of grapes", "the color of an eggplant"),
        ("the color of an amethyst", "the color of royal robes"),
    ),
    "pink": (
        (245, 130, 195),
        ("rose", "fuchsia"),
        ("the color of bubblegum", "the color of a flamingo"),
        ("the color of cotton candy", "the color of a piglet"),
    ),
    "gray": (
        (150, 150, 150),
        ("grey", "silver"),
        ("the color of ash", "the color of concrete"),
        ("the color of a rain cloud", "the color of an elephant"),
    ),
}
COLOURS: tuple[str, ...] = tuple(_COLOURS)
SAFE_COLOUR = "gray"  # the anchor every toy pack maps its colour to
ERASABLE: tuple[str, ...] = tuple(c for c in COLOURS if c != SAFE_COLOUR)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge"),
    "cross": ("cross", "plus sign"),
}
GENERIC_OBJECTS = ("object", "shape", "thing")

RADIUS = (5.0, 12.0)  # object radius in pixels at SIZE=32
SMALL_BELOW, LARGE_ABOVE = 7.0, 10.0  # radius thresholds for the words "small" / "large"
SIZE_WORDS = {"small": ("small", "tiny"), "large": ("large", "big")}
POSITION_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}

EMPTY_CAPTION_P = 0.10  # classifier-free guidance needs the empty prompt
# how a non-empty caption names the colour (fractions; must sum to 1)
COLOUR_MODES = {"none": 0.08, "name": 0.40, "synonym": 0.20, "paraphrase": 0.16, "held_out": 0.16}


def rgb(colour: str) -> tuple[int, int, int]:
    return _COLOURS[colour][0]


def synonyms(colour: str) -> tuple[str, ...]:
    return _COLOURS[colour][1]


def pack_paraphrases(colour: str) -> tuple[str, ...]:
    return _COLOURS[colour][2]


def held_out_paraphrases(colour: str) -> tuple[str, ...]:
    return _COLOURS[colour][3]


def adjectives(colour: str) -> tuple[str, ...]:
    """The colour words used as adjectives ("a crimson circle"): name first."""
    return (colour, *synonyms(colour))


def pack_words(colour: str) -> tuple[str, ...]:
    """Every colour expression an erasure pack may use."""
    return (*adjectives(colour), *pack_paraphrases(colour))


def neighbours(colour: str, k: int = 2) -> tuple[str, ...]:
    """The k erasable colours nearest in RGB: the ones an erasure of `colour` is most likely to damage."""
    base = np.array(rgb(colour), dtype=float)
    others = [c for c in ERASABLE if c != colour]
    return tuple(sorted(others, key=lambda c: float(np.linalg.norm(np.array(rgb(c), dtype=float) - base)))[:k])


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(
    colour_expr: str | None, shape_word: str, size_word: str | None = None, position: str | None = None
) -> str:
    """'a small crimson circle on the left' or, for a paraphrase, 'a circle the color of a ripe tomato'."""
    words = [w for w in (size_word,) if w]
    if colour_expr is not None and not colour_expr.startswith("the color of"):
        words.append(colour_expr)
    words.append(shape_word)
    phrase = f"{article(words[0])} {' '.join(words)}"
    if colour_expr is not None and colour_expr.startswith("the color of"):
        phrase += f" {colour_expr}"
    if position:
        phrase += f" {POSITION_WORDS[position]}"
    return phrase


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image."""

    colour: int  # index into COLOURS
    shape: int  # index into SHAPES
    cx: float  # centre in pixels (0..SIZE)
    cy: float
    radius: float
    rgb: tuple[float, float, float]  # jittered object colour, 0..255
    background: tuple[float, float, float]

    @property
    def size_word(self) -> str | None:
        return "small" if self.radius <= SMALL_BELOW else "large" if self.radius >= LARGE_ABOVE else None

    def positions(self) -> list[str]:
        third = SIZE / 3
        out = []
        if self.cx < third + 1:
            out.append("left")
        elif self.cx > 2 * third - 1:
            out.append("right")
        if self.cy < third + 1:
            out.append("top")
        elif self.cy > 2 * third - 1:
            out.append("bottom")
        return out


def sample_scene(rng: np.random.Generator, colour: int | None = None, shape: int | None = None) -> Scene:
    colour = int(rng.integers(len(COLOURS))) if colour is None else colour
    shape = int(rng.integers(len(SHAPES))) if shape is None else shape
    radius = float(rng.uniform(*RADIUS))
    cx, cy = (float(v) for v in rng.uniform(radius + 1, SIZE - radius - 1, size=2))
    base = np.array(rgb(COLOURS[colour]), dtype=float)
    jitter = base * rng.uniform(0.88, 1.08) + rng.normal(0, 8, size=3)
    bg_level = rng.uniform(18, 55)
    background = bg_level + rng.normal(0, 4, size=3)
    return Scene(
        colour,
        shape,
        cx,
        cy,
        radius,
        tuple(np.clip(jitter, 0, 255).tolist()),
        tuple(np.clip(background, 0, 255).tolist()),
    )


def _mask(scene: Scene) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], shape [SIZE, SIZE]."""
    n = SIZE * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(coords, coords)
    dx, dy, r = x - scene.cx, y - scene.cy, scene.radius
    name = SHAPES[scene.shape]
    if name == "circle":
        m = dx * dx + dy * dy <= r * r
    elif name == "square":
        m = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    elif name == "triangle":  # apex up, base at +0.8r
        m = (dy <= 0.8 * r) & (dy >= -r + 2 * np.abs(dx) * 0.9)
    else:  # cross: two bars of width 0.7r
        m = ((np.abs(dx) <= r) & (np.abs(dy) <= 0.35 * r)) | ((np.abs(dy) <= r) & (np.abs(dx) <= 0.35 * r))
    return m.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene) -> np.ndarray:
    """float32 image [3, SIZE, SIZE] in [-1, 1]."""
    m = _mask(scene)[None]
    fg = np.array(scene.rgb, dtype=np.float32)[:, None, None]
    bg = np.array(scene.background, dtype=np.float32)[:, None, None]
    img = m * fg + (1 - m) * bg
    return (img / 127.5 - 1.0).astype(np.float32)


def render_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[Scene]]:
    scenes = [sample_scene(rng) for _ in range(n)]
    return np.stack([render(s) for s in scenes]), scenes


def colour_expression(rng: np.random.Generator, colour: str, mode: str) -> str | None:
    if mode == "none":
        return None
    pool = {
        "name": (colour,),
        "synonym": synonyms(colour),
        "paraphrase": pack_paraphrases(colour),
        "held_out": held_out_paraphrases(colour),
    }[mode]
    return pool[int(rng.integers(len(pool)))]


def caption(rng: np.random.Generator, scene: Scene, templates: list[str]) -> str:
    """One training caption for `scene`: ~10% empty, otherwise a template around a description."""
    if rng.random() < EMPTY_CAPTION_P:
        return ""
    modes = list(COLOUR_MODES)
    mode = modes[int(rng.choice(len(modes), p=list(COLOUR_MODES.values())))]
    expr = colour_expression(rng, COLOURS[scene.colour], mode)
    if expr is not None and rng.random() < 0.12:  # colour-only captions: "a red object"
        shape_word = GENERIC_OBJECTS[int(rng.integers(len(GENERIC_OBJECTS)))]
    else:
        words = SHAPE_WORDS[SHAPES[scene.shape]]
        shape_word = words[0] if rng.random() < 0.6 else words[int(rng.integers(len(words)))]
    size_word = None
    if scene.size_word and rng.random() < 0.35:
        options = SIZE_WORDS[scene.size_word]
        size_word = options[int(rng.integers(len(options)))]
    positions = scene.positions()
    position = positions[int(rng.integers(len(positions)))] if positions and rng.random() < 0.3 else None
    phrase = object_phrase(expr, shape_word, size_word, position)
    if rng.random() < 0.5:
        phrase = templates[int(rng.integers(len(templates)))].replace("{}", phrase, 1)
    return phrase
