"""What the sweep's modules share (sweep.py runs trials, sweep_pick.py picks among them): the name of a trial's
metrics file, a trial's eval config, and ranking with tie-breakers."""

from __future__ import annotations

import math
from pathlib import Path

from .config import TRCEConfig
from .config.base import validate

METRICS_FILE = "metrics.json"


def eval_config(cfg: TRCEConfig, erase_dir: Path, image_dir: Path) -> TRCEConfig:
    """The trial's eval config: the erased model, with the sweep-wide image cache unless one is configured."""
    data = cfg.model_dump(mode="json")
    data["model"]["path"] = str(erase_dir)
    if not data["eval"].get("image_dir"):
        data["eval"]["image_dir"] = str(image_dir)
    return validate(TRCEConfig, data)


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else None


def tie_breakers(rows: list[dict], metric: str | None) -> list[tuple[str, str]]:
    """(metric, "higher"/"lower" is better) of the report tables the trials belong in, in column order: the metrics
    that break a tie on `metric` (e.g. toy/preservation, higher is better, after toy/direct)."""
    from .evaluation.report import RunMetrics, tables_for

    runs = [RunMetrics(r["trial"], {k: v for k, v in r.items() if _number(v) is not None}, "") for r in rows]
    out: list[tuple[str, str]] = []
    for table, _ in tables_for(runs):
        for col in table.columns:
            out += [(k, col.better) for k in col.keys if k != metric and (k, col.better) not in out]
    return out


def rank(rows: list[dict], metric: str | None, mode: str) -> tuple[dict | None, list[str], list[str]]:
    """The best row by `metric` (`mode`), ties broken by `tie_breakers` in order.

    Returns (best row or None, names of the rows still tied with it after every tie-breaker, the tie-breakers that
    decided: empty when `metric` alone did).
    """
    scored = [r for r in rows if metric and _number(r.get(metric)) is not None]
    if not scored:
        return None, [], []
    breakers = tie_breakers(scored, metric)

    def key(r: dict) -> list[float]:
        out = [_number(r[metric]) * (1 if mode == "min" else -1)]
        for name, better in breakers:
            v = _number(r.get(name))
            out.append(math.inf if v is None else (-v if better == "higher" else v))
        return out

    ordered = sorted(scored, key=key)
    best = key(ordered[0])
    ties = [r["trial"] for r in ordered if key(r) == best]
    used = set()  # for each row tied with the best on the metric only: the first breaker that told them apart
    for r in ordered:
        k = key(r)
        if k[0] == best[0] and k != best:
            used.add(next(i for i in range(1, len(k)) if k[i] != best[i]))
    return ordered[0], ties, [breakers[i - 1][0] for i in sorted(used)]
