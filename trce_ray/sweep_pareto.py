"""Several objectives at once: the non-dominated trials (Pareto front), the best trial per objective, and the plot.

A trial dominates another when it is at least as good on every objective and strictly better on one. A trial is on
the front (`pareto` true in sweep.csv) when it has every objective and no other such trial dominates it; equal
points do not dominate each other, so ties are all on the front. Failed trials and trials missing an objective are
never on it.
"""

from __future__ import annotations

import math
from pathlib import Path

from .artifacts import atomic_file

PARETO_COLUMN = "pareto"


def _score(row: dict, goals: list[tuple[str, str]]) -> tuple[float, ...] | None:
    """The row's objectives as values to minimise; None when it failed or misses one."""
    if row.get("error"):
        return None
    out = []
    for metric, mode in goals:
        v = row.get(metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
            return None
        out.append(float(v) if mode == "min" else -float(v))
    return tuple(out)


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_flags(rows: list[dict], goals: list[tuple[str, str]]) -> list[bool]:
    """For each row, whether it is non-dominated among the rows that have every objective."""
    scores = [_score(r, goals) for r in rows]
    valid = [s for s in scores if s is not None]
    return [s is not None and not any(dominates(o, s) for o in valid) for s in scores]


def best_by_objective(rows: list[dict], goals: list[tuple[str, str]]) -> dict[str, dict]:
    """Objective -> {trial, value} of its best trial; ties go to the first trial in table order."""
    out = {}
    for metric, mode in goals:
        scored = [r for r in rows if _score(r, [(metric, mode)]) is not None]
        if scored:
            sign = 1 if mode == "min" else -1
            best = min(scored, key=lambda r: sign * r[metric])  # min() keeps the first of equal keys
            out[f"{metric}:{mode}"] = {"trial": best["trial"], "value": best[metric]}
    return out


def mark_front(rows: list[dict], goals: list[tuple[str, str]]) -> list[dict]:
    """Rows with a `pareto` column (true/false) inserted before `error`."""
    out = []
    for row, flag in zip(rows, pareto_flags(rows, goals)):
        error = row.get("error", "")
        new = {k: v for k, v in row.items() if k != "error"}
        new[PARETO_COLUMN] = flag
        new["error"] = error
        out.append(new)
    return out


def _label(row: dict, params: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.rsplit('.', 1)[-1]}={fmt(row.get(k))}" for k in params)


def write_pareto_plot(rows: list[dict], goals: list[tuple[str, str]], params: list[str], path: Path) -> bool:
    """Erasure (first objective) against preservation (the last): every trial, the front highlighted and joined,
    each point labelled with its knobs. False when fewer than two objectives or no trial has them all."""
    if len(goals) < 2:
        return False
    (xm, xmode), (ym, ymode) = goals[0], goals[-1]
    flags = pareto_flags(rows, goals)
    pts = [(r, f) for r, f in zip(rows, flags) if _score(r, goals) is not None]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    others = [r for r, f in pts if not f]
    front = sorted((r for r, f in pts if f), key=lambda r: r[xm])
    ax.scatter([r[xm] for r in others], [r[ym] for r in others], c="0.6", label="trial")
    ax.plot([r[xm] for r in front], [r[ym] for r in front], "o-", c="C3", label="Pareto front")
    labels: dict[tuple, list[str]] = {}  # equal points share one label
    for r, _ in pts:
        labels.setdefault((r[xm], r[ym]), []).append(_label(r, params))
    for (x, y), texts in labels.items():
        ax.annotate("\n".join(texts), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{xm} ({'lower' if xmode == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{ym} ({'lower' if ymode == 'min' else 'higher'} is better)")
    if len(goals) > 2:
        ax.set_title(f"front over {len(goals)} objectives: " + ", ".join(m for m, _ in goals[1:-1]) + " not drawn")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return True


def save_figure(fig, path: Path) -> None:
    """`fig` as a PNG at `path`, written whole or not at all, then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def summarise(cfg, rows: list[dict], trials: list, out: Path) -> tuple[list[dict], dict]:
    """Rows with the `pareto` column and the summary for sweep.json (objectives, best per objective, the front);
    with two or more objectives also `pareto.png`. No objectives (no `sweep.metric`/`sweep.objectives`): unchanged."""
    from .sweep_search import objectives

    goals = objectives(cfg)
    if not goals:
        return rows, {}
    rows = mark_front(rows, goals)
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    write_pareto_plot(rows, goals, params, out / "pareto.png")
    return rows, {
        "objectives": [f"{m}:{mode}" for m, mode in goals],
        "best_by_objective": best_by_objective(rows, goals),
        "pareto": [r["trial"] for r in rows if r[PARETO_COLUMN]],
    }
