"""Why some toy colours resist stage 1: where the edit leaves each colour's text embeddings, and a per-colour grid.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/toy_colours_stage1.py geometry            # text encoder only
    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/toy_colours_stage1.py grid --colours green blue \\
        --eta 0.3 1 3 --tokens eot eot,last all                                         # + images, classifier

`geometry`: for every erasable colour, stage 1 as the demo runs it (pack toy-<colour>, its preservation prompts,
`--convention` / `--eta` / `--tokens`) gives the map M with W' = W M for every K/V matrix: the edited model reads
M e where the original read e. Each of the demo's evaluation prompts (48 direct, 48 held-out paraphrase, seed 0)
is paired with its twin for every colour (same template and shape, colour expression swapped). Distances are
taken where the UNet reads them, in the K/V outputs of all edited matrices stacked (||W (x - y)||), from M e to the
original embedding of each twin, in units of the original target-gray distance of that prompt: `to gray` (1 = not
moved, 0 = landed on gray), `nearest other` colour, `to itself` (the unedited target), and how often gray or
another colour is the nearest. Tokens: the first [EoT] (what `tokens: [eot]` edits), the colour expression's last
token, and the mean of the padding positions after the first [EoT].

`swap`: which positions carry the colour to the original UNet: the target's direct / paraphrase prompts drawn from
text-encoder outputs whose [EoT], padding, colour word, or everything from the colour word on come from the gray
twin (an ideal edit of those positions), target rate by the toy classifier (20 DDIM steps, guidance 5).

`grid`: per colour, the stage-1 settings of the grid (role sets may include `pad`) scored with
the toy classifier like bench/toy_eta.py (24 direct, 24 held-out paraphrase, 6 prompts per other colour, 20 DDIM
steps, guidance 5), the original first.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from trce_ray.artifacts import apply_delta
from trce_ray.models import adapter_for
from trce_ray.models.tokens import key_positions
from trce_ray.stage1.closed_form import edited_weights, solve_map, stream_statistics
from trce_ray.stage1.embeddings import erase_embeddings, preserve_gram, resolve_roles
from trce_ray.stage1.run import stage1_prompts
from trce_ray.toy.assets import load_toy_classifier, load_toy_pipeline
from trce_ray.toy.bench import SET_NAMES, classify, generate, prompt_sets, score
from trce_ray.toy.demo import ToyDemoConfig, format_table
from trce_ray.toy.rows import stage1_config
from trce_ray.toy.world import (
    COLOURS,
    ERASABLE,
    SAFE_COLOUR,
    SHAPE_WORDS,
    SHAPES,
    adjectives,
    held_out_paraphrases,
    object_phrase,
)


class Stage1Maps:
    """M for one colour and token roles at any eta: the sums of Eq. 5 are embedded once, solved per eta."""

    def __init__(self, adapter, colour: str, tokens: list[str], convention: str):
        s1 = {"tokens": tokens, "convention": convention}
        self.s1 = stage1_config(ToyDemoConfig(target=colour, device="cpu", stage1=s1)).stage1
        pairs, keep = stage1_prompts(self.s1)
        e_m, e_s = erase_embeddings(adapter, pairs, resolve_roles(adapter, tokens))
        gram, q = preserve_gram(adapter, keep, self.s1.preserve_tokens)
        self.stats = stream_statistics(e_m, e_s, gram, q, len(pairs), len(keep))

    def map(self, eta: float) -> torch.Tensor:
        return solve_map(self.stats, eta, self.s1.convention, self.s1.ridge)


def paired(target: str, n: int = 48) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """The demo's direct and held-out paraphrase prompts of `target` (seed 0), each with its twin for every colour:
    the same template and shape with the colour expression swapped for that colour's expression of the same rank
    ("a photo of a crimson square" -> "a photo of a silver square"; "... the color of a fire truck" -> "... the
    color of a rain cloud"). Items are (prompt, colour expression), per set and colour."""
    sets = prompt_sets(target, n, n, 0)
    out = {}
    for name, exprs_of in (("direct", adjectives), ("paraphrase", held_out_paraphrases)):
        own = exprs_of(target)
        out[name] = {c: [] for c in COLOURS}
        for i, row in enumerate(sets[name]):
            k = (i // len(SHAPES)) % len(own)
            shape = SHAPE_WORDS[SHAPES[row.shape]][0]
            phrase = object_phrase(own[k], shape)
            for c in COLOURS:
                expr = exprs_of(c)[k % len(exprs_of(c))]
                out[name][c].append((row.prompt.replace(phrase, object_phrase(expr, shape)), expr))
    return out


@torch.no_grad()
def token_rows(adapter, items: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Per prompt ([N, d], float64): the first [EoT], the colour expression's last token, and the mean of the
    padding positions after the first [EoT] (CLIP pads with [EoT], and those positions see the whole prompt)."""
    prompts = [p for p, _ in items]
    out = adapter.encode_text(prompts)
    seg, hidden = out.segments[0], out.hidden.double()
    rows = {"eot": [], "word": [], "pad": []}
    for i, (prompt, expr) in enumerate(items):
        eot = int(seg.eot_index[i])
        start = prompt.index(expr)
        word = key_positions(seg.tokenizer, prompt, (start, start + len(expr)))[-1]
        rows["eot"].append(hidden[i, eot])
        rows["word"].append(hidden[i, word])
        rows["pad"].append(hidden[i, eot + 1 :].mean(0))
    return {k: torch.stack(v) for k, v in rows.items()}


def geometry(args) -> None:
    pipe = load_toy_pipeline()
    adapter = adapter_for(pipe)
    params = dict(adapter.denoiser.named_parameters())
    w = torch.cat([params[n].detach().double()[:, adapter.edit_columns(n)] for n in adapter.edit_targets()])
    gram = w.T @ w  # ||W x||^2 = x^T G x over every edited K/V matrix

    def dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = x - y
        return ((d @ gram) * d).sum(-1).clamp_min(0).sqrt()

    print(
        f"convention {args.convention}, eta {args.eta:g}, tokens {args.tokens}. Per prompt, K/V distances of the "
        "edited embedding M e to the original embedding of the same prompt with gray / another colour, in units "
        "of the original target-gray distance (1 = not moved toward gray, 0 = landed on gray); means over prompts"
    )
    head = (
        f"{'colour':<8}{'set':<12}{'token':<6}{'to gray':>8}{'nearest other':>22}{'to itself':>10}"
        f"{'%gray':>7}{'%other':>7}"
    )
    print(head + "\n" + "-" * len(head))
    for colour in args.colours:
        m = Stage1Maps(adapter, colour, args.tokens, args.convention).map(args.eta)
        for name, twins in paired(colour).items():
            emb = {c: token_rows(adapter, items) for c, items in twins.items()}
            for token in ("eot", "word", "pad"):
                e = emb[colour][token]
                edited = e @ m.T  # rows: M e
                unit = dist(e, emb[SAFE_COLOUR][token])
                to = {c: dist(edited, emb[c][token]) / unit for c in COLOURS}
                others = [c for c in COLOURS if c not in (colour, SAFE_COLOUR)]
                near, which = torch.stack([to[c] for c in others]).min(0)
                common = Counter(others[int(i)] for i in which).most_common(1)[0][0]
                gray_first = (to[SAFE_COLOUR] < torch.minimum(near, to[colour])).double().mean()
                other_first = (near < torch.minimum(to[SAFE_COLOUR], to[colour])).double().mean()
                print(
                    f"{colour:<8}{name:<12}{token:<6}{to[SAFE_COLOUR].mean():>8.2f}"
                    f"{f'{near.mean():.2f} ({common})':>22}{to[colour].mean():>10.2f}"
                    f"{100 * gray_first:>6.0f}%{100 * other_first:>6.0f}%",
                    flush=True,
                )


def grid(args) -> None:
    torch.set_num_threads(1)
    pipe, classifier = load_toy_pipeline(), load_toy_classifier()
    adapter = adapter_for(pipe)
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    for colour in args.colours:
        sets = prompt_sets(colour, 24, 24, 6)

        def measure(reference=None, colour=colour, sets=sets):
            preds = {s: classify(classifier, generate(pipe, sets[s])) for s in SET_NAMES}
            return score(colour, sets, preds, reference), preds["preservation"]["features"]

        rows = {}
        rows["original"], reference = measure()
        for tokens in args.tokens:
            roles = tokens.split(",")
            maps = Stage1Maps(adapter, colour, roles, args.convention)
            for eta in args.eta:
                apply_delta(pipe.unet, edited_weights(adapter, {0: maps.map(eta)}))
                rows[f"{tokens} eta={eta:g}"], _ = measure(reference)
                pipe.unet.load_state_dict(original)
        print(f"convention {args.convention}")
        print(format_table(rows, colour), flush=True)


SWAPS = ("none", "eot", "eot+pad", "word+eot", "word..end", "twin")


@torch.no_grad()
def swapped(adapter, items: list[tuple[str, str]], twins: list[tuple[str, str]], swap: str) -> torch.Tensor:
    """Text-encoder outputs [N, 77, d] of `items` with some positions taken from their gray twins (an ideal edit of
    those positions): `eot` the first [EoT]; `eot+pad` it and every padding position after it (aligned from the
    [EoT]); `word+eot` the colour expression's last token and the [EoT]; `word..end` every position from the colour
    expression on (everything a causal encoder lets the colour reach, aligned from the start of the expression);
    `twin` the whole twin."""
    a, b = adapter.encode_text([p for p, _ in items]), adapter.encode_text([p for p, _ in twins])
    if swap == "twin":
        return b.hidden
    h, g = a.hidden.clone(), b.hidden
    seg_a, seg_b = a.segments[0], b.segments[0]
    length = h.shape[1]
    for i, ((pa, ea), (pb, eb)) in enumerate(zip(items, twins)):
        ta, tb = int(seg_a.eot_index[i]), int(seg_b.eot_index[i])
        wa = key_positions(seg_a.tokenizer, pa, (pa.index(ea), pa.index(ea) + len(ea)))
        wb = key_positions(seg_b.tokenizer, pb, (pb.index(eb), pb.index(eb) + len(eb)))
        if swap in ("eot", "word+eot"):
            h[i, ta] = g[i, tb]
        if swap == "word+eot":
            h[i, wa[-1]] = g[i, wb[-1]]
        if swap in ("eot+pad", "word..end"):
            first_a, first_b = (ta, tb) if swap == "eot+pad" else (wa[0], wb[0])
            n = min(length - first_a, length - first_b)
            h[i, first_a : first_a + n] = g[i, first_b : first_b + n]
    return h


def swap(args) -> None:
    """Which token positions carry the colour to the original UNet: the target's direct and held-out paraphrase
    prompts drawn with positions replaced by their gray twin's (`swapped`), target rate by the classifier."""
    torch.set_num_threads(1)
    pipe, classifier = load_toy_pipeline(), load_toy_classifier()
    adapter = adapter_for(pipe)
    head = f"{'colour':<8}{'set':<12}" + "".join(f"{s:>11}" for s in SWAPS)
    print("target rate (%) of the original model when positions come from the gray twin\n" + head)
    print("-" * len(head))
    for colour in args.colours:
        sets = prompt_sets(colour, args.n, args.n, 0)
        pairs = paired(colour, args.n)
        for name in ("direct", "paraphrase"):
            cells = []
            for kind in SWAPS:
                embeds = (
                    None if kind == "none" else swapped(adapter, pairs[name][colour], pairs[name][SAFE_COLOUR], kind)
                )
                pred = classify(classifier, generate(pipe, sets[name], embeds=embeds))
                cells.append(100 * float((pred["colour"] == COLOURS.index(colour)).double().mean()))
            print(f"{colour:<8}{name:<12}" + "".join(f"{c:>11.0f}" for c in cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("geometry")
    g.add_argument("--colours", nargs="+", default=list(ERASABLE))
    g.add_argument("--eta", type=float, default=1.0)
    g.add_argument("--tokens", nargs="+", default=["eot"])
    g.add_argument("--convention", default="normalised")
    r = sub.add_parser("grid")
    r.add_argument("--colours", nargs="+", default=["green", "blue", "yellow", "purple"])
    r.add_argument("--eta", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    r.add_argument("--tokens", nargs="+", default=["eot", "eot,last", "all"], help="comma-separated role sets")
    r.add_argument("--convention", default="normalised")
    w = sub.add_parser("swap")
    w.add_argument("--colours", nargs="+", default=list(ERASABLE))
    w.add_argument("--n", type=int, default=24, help="direct and paraphrase prompts per colour")
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"geometry": geometry, "grid": grid, "swap": swap}[args.command](args)


if __name__ == "__main__":
    main()
