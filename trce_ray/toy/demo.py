"""The main job on the toy world: erase one colour and print a table shaped like the paper's Table 1.

    trce-ray toy demo --output runs/demo
    trce-ray toy demo --output runs/demo-blue --target blue --set stage1.eta=0.1
    trce-ray toy demo --output runs/demo-all --target all --seeds 0 1 2

Writes, atomically, `DIR/results.json` (`{"rows": {"original": {...}, "TRCE(T)": {...}}, ...}`), one subfolder per
erased row named after the row (`DIR/TRCE(T)/stage1.safetensors`, ...), `DIR/grid_<row>.png` per row and
`DIR/table.txt`. With several targets (`target: all` or `red,blue`), each colour's folder `DIR/<colour>/` holds
exactly that, and `DIR/results.json` nests them: `{"targets": [...], "colours": {"red": {...}, ...}, ...}`.
With several generation `seeds`, each row's figures are means over the seeds (`spread`: sample standard
deviations, `per_seed`: each seed's figures); the erasure itself runs once, with `seed`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator
from tqdm.auto import tqdm

from ..artifacts import atomic_dir, write_json
from ..config.base import Section
from ..config.tracking import TrackingConfig
from .bench import SET_NAMES, classify, generate, per_colour_accuracy, prompt_sets, score
from .grid import save_grid
from .settings import load_section
from .summary import format_summary, mean_spread
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
# Both toy families use it; token roles and the pooled edit are each family's adapter defaults (FLUX: T5 eot + last,
# pooled path edited; docs/toy.md "The FLUX toy" has the variants)
TOY_STAGE1 = {"convention": "normalised", "eta": 1.0}


class ToyDemoConfig(Section):
    family: Literal["sd", "flux"] = "sd"  # the shipped toy model: SD-1.x-style UNet (sd) or FLUX-style transformer
    # a toy pipeline folder of `family` to run on instead of the shipped one (e.g. what `trce-ray toy train` wrote)
    pipeline: str | None = None
    target: str = "red"  # the colour to erase (an erasable toy colour), a comma-separated list of them, or all
    rows: list[str] | None = None  # erased rows to run, in order; None = every registered row
    n_direct: PositiveInt = 48  # direct prompts (target by name / synonym)
    n_paraphrase: PositiveInt = 48  # held-out paraphrase prompts
    n_per_colour: PositiveInt = 12  # preservation prompts per other colour
    steps: PositiveInt = 20  # DDIM steps
    guidance: PositiveFloat = 5.0  # classifier-free guidance scale
    batch_size: PositiveInt = 64
    seed: int = 0  # prompt sampling and per-row generation seeds; the erasure's seed
    seeds: list[int] | None = None  # generation seeds to average over (mean and spread); None = [seed]
    device: str = "auto"
    stage1: dict[str, Any] = Field(default_factory=lambda: dict(TOY_STAGE1))  # stage1.* overrides for TRCE(T)
    # overrides of the stage-2 rows' cache.* and train.* settings (rows.py), e.g. {train: {lr: 1e-4}}
    stage2: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # MLflow: one run, one child run per row

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, v):
        if isinstance(v, list | tuple):
            v = ",".join(map(str, v))
        names = [t.strip() for t in str(v).split(",") if t.strip()]
        if names == ["all"]:
            return "all"
        if not names or any(n not in ERASABLE for n in names):
            raise ValueError(f"target must be one of {', '.join(ERASABLE)}, a comma-separated list of them, or all")
        if len(set(names)) < len(names):
            raise ValueError(f"target names a colour twice ({v})")
        return ",".join(names)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if v is not None and (not v or len(set(v)) < len(v)):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return v

    @property
    def targets(self) -> list[str]:
        """The colours to erase, one demo each."""
        return list(ERASABLE) if self.target == "all" else self.target.split(",")

    @property
    def eval_seeds(self) -> list[int]:
        """The generation seeds every row is scored over."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    @field_validator("stage1")
    @classmethod
    def _stage1(cls, v):
        return {**TOY_STAGE1, **v}

    @field_validator("pipeline")
    @classmethod
    def _pipeline(cls, v):
        if v is not None:
            v = str(Path(v).expanduser().resolve())
            if not (Path(v) / "model_index.json").is_file():
                raise ValueError(f"{v} is not a diffusers pipeline folder (no model_index.json)")
        return v

    @field_validator("stage2")
    @classmethod
    def _stage2(cls, v):
        unknown = sorted(set(v) - {"cache", "train"})
        if unknown:
            raise ValueError(f"stage2 takes cache and train overrides, not {', '.join(unknown)}")
        return v

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


def format_table(
    rows: dict[str, dict[str, float]], target: str, spread: dict[str, dict[str, float]] | None = None
) -> str:
    """Plain-text table with arrows saying which direction is better, rates as percentages; with `spread` (per row
    and metric, e.g. the standard deviation over seeds) each cell reads mean±spread."""
    head = f"{'erase ' + repr(target):<14}" + "".join(f"{h + ('↑' if up else '↓'):>13}" for _, h, up in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        cells = []
        for key, _, _ in COLUMNS:
            v, s = m[key], None if spread is None else spread[name][key]
            if key == "fid_gen":
                cells.append(f"{v:>13.2f}" if s is None else f"{f'{v:.2f}±{s:.2f}':>13}")
            else:
                cells.append(f"{100 * v:>12.1f}%" if s is None else f"{f'{100 * v:.1f}±{100 * s:.1f}%':>13}")
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


def _log_row(parent, cfg: ToyDemoConfig, name: str, results: dict, grid: Path, run_name: str) -> None:
    """One child MLflow run of the demo's run: the row's metrics (rates as fractions), timing and grid image."""
    if not parent.active:
        return
    from ..tracking import track

    row_cfg = _TrackedDemo(cfg, None)
    tags = {"trce.row": name, "trce.target": cfg.target}
    with track(row_cfg, "toy-demo-row", run_name=run_name, parent_run_id=parent.run_id, tags=tags) as run:
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
    """Generate with the original model and each erased row, score them, write everything to `output`; with
    several targets, one such demo per colour in `output/<colour>/` and a summary over them.

    Args:
        tracker: the demo's open MLflow run (trce_ray.tracking); each row becomes a child run of it.
    """
    from ..models import adapter_for, load_pipeline
    from ..models.loading import resolve_device
    from ..tracking import NULL_TRACKER
    from .assets import flux_toy_pipeline_dir, load_toy_classifier, toy_pipeline_dir
    from .rows import stage2_config

    if cfg.stage2:  # a bad cache/train override fails here, before any output or model work
        stage2_config(cfg, Path(output) / "stage2-cache")
    if cfg.pipeline is not None:
        folder = cfg.pipeline
    else:
        folder = flux_toy_pipeline_dir() if cfg.family == "flux" else toy_pipeline_dir()
    base = load_pipeline(str(folder), device=resolve_device(cfg.device))
    if adapter_for(base).family != cfg.family:
        from ..errors import ConfigError

        raise ConfigError(f"pipeline {folder} is not a {cfg.family} toy; set family to match it")
    shared = _Shared(base, load_toy_classifier(), progress, tracker or NULL_TRACKER)
    targets = cfg.targets
    with atomic_dir(output, overwrite=overwrite) as tmp:
        if len(targets) == 1:
            return _run_target(cfg.model_copy(update={"target": targets[0]}), tmp, shared)
        results = {"targets": targets, "colours": {}, "config": cfg.model_dump(mode="json")}
        for colour in tqdm(targets, desc="toy demo colours", unit="colour", disable=not progress):
            sub = cfg.model_copy(update={"target": colour})
            results["colours"][colour] = _run_target(sub, tmp / colour, shared, prefix=f"{colour}: ")
        summary = format_summary(results["colours"])
        results["summary"] = summary
        tables = [summary, *(r["table"] for r in results["colours"].values())]
        write_json(tmp / "results.json", results)
        (tmp / "table.txt").write_text("\n\n".join(tables) + "\n")
        (tmp / "demo_config.yaml").write_text(_yaml(cfg))
    return results


@dataclass(frozen=True)
class _Shared:
    """What every colour's demo reuses: the original pipeline (rows must not modify it), the classifier, the
    progress switch and the open MLflow run."""

    base: Any
    classifier: Any
    progress: bool
    tracker: Any


def _run_target(cfg: ToyDemoConfig, folder: Path, shared: _Shared, prefix: str = "") -> dict:
    """One target's demo into `folder` (created here; rows' subfolders, grids, results.json, table.txt)."""
    from .rows import ROWS, RowContext

    folder.mkdir(exist_ok=True)
    row_names = list(cfg.rows if cfg.rows is not None else ROWS)
    seeds = cfg.eval_seeds
    sets = {s: prompt_sets(cfg.target, cfg.n_direct, cfg.n_paraphrase, cfg.n_per_colour, s) for s in seeds}
    per_row = sum(-(-len(sets[seeds[0]][n]) // cfg.batch_size) for n in SET_NAMES) * len(seeds)
    results: dict = {
        "rows": {},
        "target": cfg.target,
        "neighbours": list(neighbours(cfg.target)),
        "prompt_sets": {n: len(sets[seeds[0]][n]) for n in SET_NAMES},
        "per_colour": {},
        "timings_s": {},
        "config": cfg.model_dump(mode="json"),
    }
    per_seed = {s: {"rows": {}, "per_colour": {}} for s in seeds}
    spread = {}
    reference: dict[int, torch.Tensor] = {}
    several = bool(prefix)  # the colour bar stays, this one goes
    total = per_row * (1 + len(row_names))
    with tqdm(total=total, desc="toy demo", unit="batch", disable=not shared.progress, leave=not several) as bar:
        for name in [ORIGINAL, *row_names]:
            t0 = time.perf_counter()
            bar.set_description(f"toy demo: {prefix}{name}")
            base = shared.base
            pipe = (
                base if name == ORIGINAL else ROWS[name](RowContext(cfg, folder / name, folder, base, shared.progress))
            )
            for k, seed in enumerate(seeds):
                images = {
                    n: generate(pipe, sets[seed][n], cfg.steps, cfg.guidance, cfg.batch_size, bar) for n in SET_NAMES
                }
                preds = {n: classify(shared.classifier, images[n].to("cpu")) for n in SET_NAMES}
                per_seed[seed]["rows"][name] = score(cfg.target, sets[seed], preds, reference.get(seed))
                per_seed[seed]["per_colour"][name] = per_colour_accuracy(sets[seed], preds)
                if name == ORIGINAL:
                    reference[seed] = preds["preservation"]["features"]
                if k == 0:
                    grid = folder / f"grid_{name}.png"
                    save_grid(_grid_groups(sets[seed], images), grid, title=f"{name}: erase {cfg.target}")
            results["rows"][name], spread[name] = mean_spread([per_seed[s]["rows"][name] for s in seeds])
            results["per_colour"][name] = mean_spread([per_seed[s]["per_colour"][name] for s in seeds])[0]
            results["timings_s"][name] = time.perf_counter() - t0
            _log_row(shared.tracker, cfg, name, results, grid, f"{prefix}{name}")
            if pipe is not base:
                del pipe
    if len(seeds) > 1:
        results.update(seeds=seeds, spread=spread, per_seed={str(s): per_seed[s] for s in seeds})
    table = format_table(results["rows"], cfg.target, spread if len(seeds) > 1 else None)
    if cfg.family == "flux":
        table = "FLUX toy (flow-matching transformer, T5 + pooled CLIP)\n" + table
    results["table"] = table
    write_json(folder / "results.json", results)
    (folder / "table.txt").write_text(table + "\n")
    (folder / "demo_config.yaml").write_text(_yaml(cfg))
    return results


def _yaml(cfg: ToyDemoConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
