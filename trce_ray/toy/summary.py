"""The demo's figures over several generation seeds (mean and spread) and its one-line-per-colour summary."""

from __future__ import annotations

import math
import statistics


def mean_spread(values: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-key mean and sample standard deviation (n - 1) of metric dicts with the same keys, one per seed.

    One dict is returned as is (spread 0), so a single seed gives exactly the single-seed figures."""
    if len(values) == 1:
        return dict(values[0]), {k: 0.0 for k in values[0]}
    mean, spread = {}, {}
    for key in values[0]:
        xs = [v[key] for v in values]
        if any(math.isnan(x) for x in xs):
            mean[key] = spread[key] = float("nan")
            continue
        mean[key] = statistics.fmean(xs)
        spread[key] = statistics.stdev(xs)
    return mean, spread


def _cell(row: dict[str, float], spread: dict[str, float] | None, fid: bool) -> str:
    def pct(key: str) -> str:
        s = "" if spread is None else f"±{100 * spread[key]:.0f}"
        return f"{100 * row[key]:.0f}{s}"

    text = "/".join(pct(k) for k in ("direct", "paraphrase", "preservation"))
    if fid:
        text += f", {row['fid_gen']:.1f}" + ("" if spread is None else f"±{spread['fid_gen']:.1f}")
    return text


def format_summary(colours: dict[str, dict]) -> str:
    """One line per colour: direct / held-out paraphrase / preservation in % and FID_gen for every row, as the
    mean ± sample standard deviation over generation seeds when there are several.

    Args:
        colours: colour -> that colour's demo results (the single-target results.json shape).
    """
    first = next(iter(colours.values()))
    names = list(first["rows"])
    several = len(first.get("seeds", [None])) > 1
    seeds = f" over seeds {', '.join(map(str, first['seeds']))} (mean±sd)" if several else ""
    cells = {
        c: [_cell(r["rows"][n], r["spread"][n] if several else None, n != names[0]) for n in names]
        for c, r in colours.items()
    }
    widths = [max(len(n), *(len(cells[c][i]) for c in cells)) + 2 for i, n in enumerate(names)]
    head = f"{'erase':<8}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths))
    lines = [f"direct↓ / paraphrase↓ / preserve↑ in %, FID_gen↓{seeds}", head, "-" * len(head)]
    lines += [f"{c:<8}" + "".join(f"{x:>{w}}" for x, w in zip(cells[c], widths)) for c in cells]
    return "\n".join(lines)
