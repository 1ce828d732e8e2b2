"""`trce-ray sweep`: a grid over the method's knobs, each point erased and evaluated as one Ray Tune trial."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from .base import Section, at_least_one, non_negative


def _number(x):
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return x
    return x


def _swept_key(key: str) -> None:
    if key.split(".")[0] in ("sweep", "output"):
        raise ValueError(f"sweep entry {key!r}: the sweep's own settings cannot be swept")


class SweepConfig(Section):
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # dotted config field -> values; all combinations run
    points: list[dict[str, Any]] = Field(default_factory=list)  # explicit points (field -> value each), crossed
    # with `grid` (search grid only): rows of an ablation table that a full grid would multiply (Table 5)
    pick: str | None = None  # rule choosing one trial: "min toy/direct where toy/preservation >= original - 0.05"
    register_as: str | None = None  # register the picked trial's erased model under this MLflow registry name
    search: Literal["grid", "random", "optuna"] = "grid"  # grid: every combination; random/optuna: num_samples points
    num_samples: int = 8  # trials of a random or optuna search
    space: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)  # field -> {loguniform|uniform|choice: [..]}
    objectives: list[str] = Field(default_factory=list)  # "METRIC:min|max" each; several: Pareto front (sweep.csv)
    stages: str = "text"  # erase stages of every trial: text (TRCE(T)), visual (TRCE(V)) or text,visual
    metric: str | None = None  # eval metric that ranks trials (e.g. asr/i2p-sexual, toy/direct); None: no ranking
    mode: Literal["min", "max"] = "min"  # whether a lower or a higher `metric` is better
    plot: list[str] = Field(default_factory=list)  # metrics drawn in sweep.png; default: metric + preservation
    max_concurrent: int = 1  # trials at once; each trial's eval actors and training workers need their own room
    trial_cpus: float = 0.25  # the trial process runs stage 1 and coordinates; the rest runs in Ray actors
    trial_gpus: float = 0.0  # give stage 1 a GPU share on GPU clusters
    max_failures: int = 0  # retries of a failed trial (Tune's FailureConfig); a trial resumes from its folder

    @field_validator("grid")
    @classmethod
    def _grid(cls, v):
        for key, values in v.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid entry {key!r} needs a non-empty list of values")
            _swept_key(key)
        return v

    @field_validator("points")
    @classmethod
    def _points(cls, v):
        for point in v:
            if not point:
                raise ValueError("every sweep.points entry needs at least one field: value")
            for key in point:
                _swept_key(key)
        return v

    @field_validator("pick")
    @classmethod
    def _pick(cls, v):
        if v is not None:
            from ..sweep_rule import parse_rule

            parse_rule(v)  # a malformed rule fails before any trial runs
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, v):
        out = {}
        for key, spec in v.items():
            _swept_key(key)
            if len(spec) != 1 or next(iter(spec)) not in ("loguniform", "uniform", "choice"):
                raise ValueError(f"space entry {key!r} needs exactly one of loguniform, uniform, choice (got {spec})")
            ((kind, values),) = spec.items()
            out[key] = {kind: values}
            if kind == "choice":
                if not values:
                    raise ValueError(f"space entry {key!r}: choice needs a non-empty list")
                continue
            values = out[key][kind] = [_number(x) for x in values]  # YAML 1.1 reads 1e-3 as a string
            if len(values) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
                raise ValueError(f"space entry {key!r}: {kind} needs two numbers [low, high] (got {values})")
            low, high = values
            if not low < high:
                raise ValueError(f"space entry {key!r}: {kind} needs low < high (got {values})")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"space entry {key!r}: loguniform needs low > 0 (got {values})")
        return out

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v):
        for text in v:
            metric, sep, mode = text.rpartition(":")
            if not sep or not metric or mode not in ("min", "max"):
                raise ValueError(f"objective {text!r} must look like METRIC:min or METRIC:max")
        return v

    _positive = field_validator("max_concurrent", "num_samples")(at_least_one)
    _non_negative = field_validator("max_failures")(non_negative)
