"""The main job on the toy world: erase one colour and print a table shaped like the paper's Table 1.

    trce-ray toy demo --output runs/demo
    trce-ray toy demo --output runs/demo-blue --target blue --set stage1.eta=0.1

Writes, atomically, `DIR/results.json` (`{"rows": {"original": {...}, "TRCE(T)": {...}}, ...}`), one subfolder per
erased row named after the row (`DIR/TRCE(T)/stage1.safetensors`, ...), `DIR/grid_<row>.png` per row and
`DIR/table.txt`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator
from tqdm.auto import tqdm

from ..artifacts import atomic_dir, write_json
from ..config.base import Section
from ..config.tracking import TrackingConfig
from .bench import SET_NAMES, classify, generate, per_colour_accuracy, prompt_sets, score
from .grid import save_grid
from .settings import load_section
from .world import ERASABLE, neighbours

ORIGINAL = "original"
COLUMNS = [  # (key, header, higher is better)
    ("direct", "direct", False),
    ("paraphrase", "paraphrase", False),
    ("preservation", "preserve", True),
    ("neighbours", "neighbours", True),
    ("fid_gen", "FID_gen", False),
    ("agreement", "agreement", True),
]


# eta 1 in the normalised convention (each sum over its count, every token position preserved) = eta 300/30800 in
# Eq. 5 as printed with preserve_tokens all (docs/stage1.md); overrides keep the convention unless they name one
TOY_STAGE1 = {"convention": "normalised", "eta": 1.0}


class ToyDemoConfig(Section):
    target: str = "red"  # the colour to erase (one of the erasable toy colours)
    rows: list[str] | None = None  # erased rows to run, in order; None = every registered row
    n_direct: PositiveInt = 48  # direct prompts (target by name / synonym)
    n_paraphrase: PositiveInt = 48  # held-out paraphrase prompts
    n_per_colour: PositiveInt = 12  # preservation prompts per other colour
    steps: PositiveInt = 20  # DDIM steps
    guidance: PositiveFloat = 5.0  # classifier-free guidance scale
    batch_size: PositiveInt = 64
    seed: int = 0  # prompt sampling and per-row generation seeds
    device: str = "auto"
    stage1: dict[str, Any] = Field(default_factory=lambda: dict(TOY_STAGE1))  # stage1.* overrides for TRCE(T)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # MLflow: one run, one child run per row

    @field_validator("target")
    @classmethod
    def _target(cls, v):
        if v not in ERASABLE:
            raise ValueError(f"target must be one of {', '.join(ERASABLE)}")
        return v

    @field_validator("stage1")
    @classmethod
    def _stage1(cls, v):
        return {**TOY_STAGE1, **v}

    @field_validator("rows")
    @classmethod
    def _rows(cls, v):
        from .rows import ROWS

        for name in v or []:
            if name not in ROWS:
                raise ValueError(f"unknown row {name!r}; registered rows: {', '.join(ROWS)}")
        return v

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict | None = None):
        """Read a YAML file (optional), apply dotted overrides, validate (errors name the field); the MLflow URI is
        made absolute here (config/paths.py)."""
        from ..config.paths import tracking_uri

        cfg = load_section(cls, path, overrides)
        if not cfg.tracking.enabled:
            return cfg
        tracking = cfg.tracking.model_copy(update={"uri": tracking_uri(cfg.tracking.uri)})
        return cfg.model_copy(update={"tracking": tracking})


def format_table(rows: dict[str, dict[str, float]], target: str) -> str:
    """Plain-text table with arrows saying which direction is better, rates as percentages."""
    head = f"{'erase ' + repr(target):<14}" + "".join(f"{h + ('↑' if up else '↓'):>13}" for _, h, up in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        cells = []
        for key, _, _ in COLUMNS:
            v = m[key]
            cells.append(f"{v:>13.2f}" if key == "fid_gen" else f"{100 * v:>12.1f}%")
        lines.append(f"{name:<14}" + "".join(cells))
    return "\n".join(lines)


def _grid_groups(sets, images: dict[str, torch.Tensor], columns: int = 8) -> list[tuple[str, torch.Tensor]]:
    groups = [("direct", images["direct"][:columns]), ("paraphrase", images["paraphrase"][:columns])]
    pres = sets["preservation"]
    by_colour: dict[int, list[int]] = {}
    for i, r in enumerate(pres):
        if r.neighbour:
            by_colour.setdefault(r.colour, []).append(i)
    near = [i for group in zip(*by_colour.values()) for i in group][:columns]  # alternate the neighbour colours
    far = [i for i, r in enumerate(pres) if not r.neighbour][:: max(1, len(pres) // (2 * columns))][:columns]
    groups.append(("neighbours", images["preservation"][near]))
    groups.append(("others", images["preservation"][far]))
    return groups


def _log_row(parent, cfg: ToyDemoConfig, name: str, results: dict, grid: Path) -> None:
    """One child MLflow run of the demo's run: the row's metrics (rates as fractions), timing and grid image."""
    if not parent.active:
        return
    from ..tracking import track

    row_cfg = _TrackedDemo(cfg, None)
    with track(row_cfg, "toy-demo-row", run_name=name, parent_run_id=parent.run_id, tags={"trce.row": name}) as run:
        run.log_metrics({**results["rows"][name], "time_s": results["timings_s"][name]})
        run.log_metrics({f"per_colour/{k}": v for k, v in results["per_colour"][name].items()})
        run.log_artifact(grid, "grids")


@dataclass(frozen=True)
class _TrackedDemo:
    """What trce_ray.tracking.track reads of a command's config: `tracking`, `output` and `model_dump`."""

    cfg: ToyDemoConfig
    output: str | None

    @property
    def tracking(self) -> TrackingConfig:
        return self.cfg.tracking

    def model_dump(self, mode: str = "json") -> dict:
        return self.cfg.model_dump(mode=mode)


def run_demo(
    cfg: ToyDemoConfig, output: str | Path, overwrite: bool = False, progress: bool = True, tracker=None
) -> dict:
    """Generate with the original model and each erased row, score them, write everything to `output`.

    Args:
        tracker: the demo's open MLflow run (trce_ray.tracking); each row becomes a child run of it.
    """
    from ..tracking import NULL_TRACKER

    tracker = tracker or NULL_TRACKER
    from ..models import load_pipeline
    from ..models.loading import resolve_device
    from .assets import load_toy_classifier, toy_pipeline_dir
    from .rows import ROWS, RowContext

    row_names = list(cfg.rows if cfg.rows is not None else ROWS)
    sets = prompt_sets(cfg.target, cfg.n_direct, cfg.n_paraphrase, cfg.n_per_colour, cfg.seed)
    device = resolve_device(cfg.device)
    base = load_pipeline(str(toy_pipeline_dir()), device=device)
    classifier = load_toy_classifier()
    per_row = sum(-(-len(sets[s]) // cfg.batch_size) for s in SET_NAMES)
    results: dict = {
        "rows": {},
        "target": cfg.target,
        "neighbours": list(neighbours(cfg.target)),
        "prompt_sets": {s: len(sets[s]) for s in SET_NAMES},
        "per_colour": {},
        "timings_s": {},
        "config": cfg.model_dump(mode="json"),
    }
    with atomic_dir(output, overwrite=overwrite) as tmp:
        reference = None
        with tqdm(total=per_row * (1 + len(row_names)), desc="toy demo", unit="batch", disable=not progress) as bar:
            for name in [ORIGINAL, *row_names]:
                t0 = time.perf_counter()
                bar.set_description(f"toy demo: {name}")
                pipe = base if name == ORIGINAL else ROWS[name](RowContext(cfg, tmp / name, tmp, base, progress))
                images = {s: generate(pipe, sets[s], cfg.steps, cfg.guidance, cfg.batch_size, bar) for s in SET_NAMES}
                preds = {s: classify(classifier, images[s].to("cpu")) for s in SET_NAMES}
                results["rows"][name] = score(cfg.target, sets, preds, reference)
                results["per_colour"][name] = per_colour_accuracy(sets, preds)
                if name == ORIGINAL:
                    reference = preds["preservation"]["features"]
                grid = tmp / f"grid_{name}.png"
                save_grid(_grid_groups(sets, images), grid, title=f"{name}: erase {cfg.target}")
                results["timings_s"][name] = time.perf_counter() - t0
                _log_row(tracker, cfg, name, results, grid)
                if pipe is not base:
                    del pipe
        table = format_table(results["rows"], cfg.target)
        results["table"] = table
        write_json(tmp / "results.json", results)
        (tmp / "table.txt").write_text(table + "\n")
        (tmp / "demo_config.yaml").write_text(_yaml(cfg))
    return results


def _yaml(cfg: ToyDemoConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
