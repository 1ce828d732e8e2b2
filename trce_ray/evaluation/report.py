"""Comparison tables in the shape of the TRCE paper (Table 1: sexual content; Table 2: I2P with Q16; Table 9:
artist styles; Table 10: celebrities), one row per evaluated model, from eval folders or MLflow runs.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TRCEError
from .prompts import I2P_CATEGORIES


@dataclass(frozen=True)
class Column:
    title: str
    keys: tuple[str, ...]  # first metric name present wins (e.g. coco-3k before coco-30k)
    fmt: str = "pct"  # pct: fraction shown as %, num: 2 decimals
    better: str = "lower"


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[Column, ...]
    erasure: tuple[str, ...]  # a run belongs in the table when it has one of these metric prefixes


def _kp(coco=("coco-3k", "coco-30k")) -> tuple[Column, ...]:
    return (
        Column("FID_gen", tuple(f"fid_gen/{c}" for c in coco), "num"),
        Column("FID_real", tuple(f"fid_real/{c}" for c in coco), "num"),
        Column("CLIP-S", tuple(f"clip_score/{c}" for c in coco), "num", "higher"),
    )


TABLE1 = Table(
    "Sexual-content erasure: NudeNet attack success rate (cf. TRCE Table 1)",
    (
        Column("I2P", ("asr/i2p-sexual",)),
        Column("MMA", ("asr/mma",)),
        Column("P4D", ("asr/p4d",)),
        Column("Ring", ("asr/ring-a-bell",)),
        Column("UnDiff", ("asr/unlearndiff",)),
        Column("Adv", ("asr/adv",)),
        *_kp(),
    ),
    ("asr/i2p-sexual", "asr/mma", "asr/p4d", "asr/ring-a-bell", "asr/unlearndiff"),
)
TABLE2 = Table(
    "Multi-concept erasure: Q16 inappropriate rate on I2P (cf. TRCE Table 2)",
    (
        *[
            Column(c.title() if c != "self-harm" else "Self-harm", (f"q16/i2p/{c.replace(' ', '-')}",))
            for c in I2P_CATEGORIES
        ],
        Column("Overall", ("q16/i2p/overall",)),
        *_kp(),
    ),
    ("q16/i2p/",),
)
TABLE10 = Table(
    "Celebrity erasure (cf. TRCE Table 10)",
    (
        Column("Acc_e", ("celebrity/acc_e",)),
        Column("Acc_r", ("celebrity/acc_r",), better="higher"),
        Column("H_c", ("celebrity/h_c",), better="higher"),
        *_kp(),
    ),
    ("celebrity/",),
)
KNOWLEDGE = Table("Knowledge preservation (COCO)", _kp(), ("fid_gen/", "fid_real/", "clip_score/"))


@dataclass
class RunMetrics:
    label: str
    metrics: dict[str, float]
    source: str


def artist_table(runs: list[RunMetrics]) -> Table | None:
    sets = sorted({k.split("/")[1] for r in runs for k in r.metrics if k.startswith("artist/")})
    if not sets:
        return None
    cols = []
    for s in sets:
        cols += [
            Column(f"{s} Acc_e", (f"artist/{s}/acc_e",)),
            Column(f"{s} Acc_u", (f"artist/{s}/acc_u",), better="higher"),
        ]
    return Table("Artist-style erasure (cf. TRCE Table 9)", tuple(cols), ("artist/",))


def other_asr_table(runs: list[RunMetrics]) -> Table | None:
    known = {k for c in TABLE1.columns for k in c.keys}
    extra = sorted({k for r in runs for k in r.metrics if k.startswith("asr/") and k not in known})
    if not extra:
        return None
    return Table(
        "Other prompt sets: NudeNet attack success rate",
        tuple(Column(k.split("/", 1)[1], (k,)) for k in extra),
        tuple(extra),
    )


def _value(metrics: dict[str, float], col: Column) -> float | None:
    for k in col.keys:
        v = metrics.get(k)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return float(v)
    return None


def _fmt(v: float | None, fmt: str) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if fmt == "pct" else f"{v:.2f}"


def tables_for(runs: list[RunMetrics]) -> list[tuple[Table, list[RunMetrics]]]:
    """The tables that have data, each with the runs that belong in it (plug-in suites' tables after Table 10)."""
    from .registry import suites

    plugin_tables = [s.table for s in suites().values() if s.table is not None]
    candidates = [TABLE1, TABLE2, artist_table(runs), TABLE10, *plugin_tables, other_asr_table(runs)]
    out = []
    covered = set()
    for t in [c for c in candidates if c is not None]:
        members = [r for r in runs if any(k.startswith(p) for k in r.metrics for p in t.erasure)]
        if members:
            out.append((t, members))
            covered.update(id(r) for r in members)
    rest = [
        r for r in runs if id(r) not in covered and any(_value(r.metrics, c) is not None for c in KNOWLEDGE.columns)
    ]
    if rest:
        out.append((KNOWLEDGE, rest))
    return out


def _cells(table: Table, runs: list[RunMetrics], bold: bool) -> list[list[str]]:
    values = [[_value(r.metrics, c) for c in table.columns] for r in runs]
    best = []
    for j, c in enumerate(table.columns):
        col = [v[j] for v in values if v[j] is not None]
        best.append((min(col) if c.better == "lower" else max(col)) if bold and len(col) > 1 else None)
    rows = []
    for r, vals in zip(runs, values):
        cells = [r.label]
        for j, (c, v) in enumerate(zip(table.columns, vals)):
            text = _fmt(v, c.fmt)
            cells.append(f"**{text}**" if best[j] is not None and v == best[j] else text)
        rows.append(cells)
    return rows


def _arrow(c: Column) -> str:
    return "↓" if c.better == "lower" else "↑"


def to_markdown(runs: list[RunMetrics]) -> str:
    parts = []
    for table, members in tables_for(runs):
        header = ["Model"] + [f"{c.title} {_arrow(c)}" for c in table.columns]
        lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in _cells(table, members, bold=True)]
        parts.append("\n".join(lines))
    if not parts:
        return "No evaluation metrics found.\n"
    note = "Rates are percentages of images (lower is better for attack success); best value in bold."
    return "\n\n".join(parts) + f"\n\n{note}\n"


def to_html(runs: list[RunMetrics], title: str = "trce-ray evaluation report") -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for table, members in tables_for(runs):
        body.append(f"<h2>{html.escape(table.title)}</h2><table><thead><tr><th>Model</th>")
        body += [f"<th>{html.escape(c.title)} {_arrow(c)}</th>" for c in table.columns]
        body.append("</tr></thead><tbody>")
        for cells in _cells(table, members, bold=True):
            tds = []
            for cell in cells:
                text = html.escape(cell.strip("*"))
                tds.append(f"<td><b>{text}</b></td>" if cell.startswith("**") else f"<td>{text}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        body.append("</tbody></table>")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "th,td{border:1px solid #999;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def single_run_markdown(label: str, metrics: dict[str, float], sets_info: dict[str, dict], notices: list[str]) -> str:
    """The report.md of one eval folder: the paper-shaped tables, the sets, skipped rows and notices."""
    lines = [
        f"# Evaluation of {label}",
        "",
        to_markdown([RunMetrics(label, metrics, "")]),
        "## Prompt sets",
        "",
        "| set | kind | prompts | images | skipped rows | detectors |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in sets_info.items():
        lines.append(
            f"| {name} | {info['kind']} | {info['prompts']} | {info['images']} | {info['skipped']} | "
            f"{', '.join(info['detectors'])} |"
        )
    if notices:
        lines += ["", "## Not measured", ""] + [f"- {n}" for n in notices]
    return "\n".join(lines) + "\n"


def from_folder(path: str | Path) -> RunMetrics:
    p = Path(path).expanduser()
    f = p / "metrics.json" if p.is_dir() else p
    if not f.is_file():
        raise TRCEError(f"{path} is not an eval output folder (no metrics.json)")
    try:
        data = json.loads(f.read_text())
    except ValueError as err:
        raise TRCEError(f"{f} is not valid JSON: {err}") from None
    label = Path(data.get("model", p.name)).name or p.name
    return RunMetrics(f"{label} ({p.name})" if p.name != label else label, data.get("metrics", {}), str(f))


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def from_mlflow(uri: str | None, experiment: str, run_ids: list[str], last: int | None = None) -> list[RunMetrics]:
    """Eval runs by id, or else every finished eval run of `experiment` (newest first, at most `last`)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ..tracking import _quiet_mlflow, resolve_tracking_uri

    _quiet_mlflow()
    resolved = resolve_tracking_uri(uri)
    client = MlflowClient(tracking_uri=resolved)
    try:
        if run_ids:
            runs = [client.get_run(r) for r in run_ids]
        else:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise TRCEError(f"no MLflow experiment named '{experiment}' at {resolved}")
            runs = client.search_runs(
                [exp.experiment_id],
                "tags.`trce.command` = 'eval' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=last or 1000,
            )
    except MlflowException as err:
        raise TRCEError(f"MLflow at {resolved}: {str(err).splitlines()[0]}") from None
    out, seen = [], {}
    for run in reversed(runs):  # oldest first, so a table reads in the order models were evaluated
        label = run.data.tags.get("trce.label") or run.info.run_name or run.info.run_id[:8]
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} [{run.info.run_id[:6]}]"
        out.append(RunMetrics(label, dict(run.data.metrics), f"runs:/{run.info.run_id}"))
    return out


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID.match(text))
