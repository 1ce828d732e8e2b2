"""`trce-ray sweep`: a grid over the method's knobs, each point erased and evaluated as one Ray Tune trial."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from .base import Section, at_least_one


class SweepConfig(Section):
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # dotted config field -> values; all combinations run
    stages: str = "text"  # erase stages of every trial: text (TRCE(T)), visual (TRCE(V)) or text,visual
    metric: str | None = None  # eval metric that ranks trials (e.g. asr/i2p-sexual, toy/direct); None: no ranking
    mode: Literal["min", "max"] = "min"  # whether a lower or a higher `metric` is better
    plot: list[str] = Field(default_factory=list)  # metrics drawn in sweep.png; default: metric + preservation
    max_concurrent: int = 1  # trials at once; each trial's eval actors and training workers need their own room
    trial_cpus: float = 0.25  # the trial process runs stage 1 and coordinates; the rest runs in Ray actors
    trial_gpus: float = 0.0  # give stage 1 a GPU share on GPU clusters

    @field_validator("grid")
    @classmethod
    def _grid(cls, v):
        for key, values in v.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid entry {key!r} needs a non-empty list of values")
            if key.split(".")[0] in ("sweep", "output"):
                raise ValueError(f"grid entry {key!r}: the sweep's own settings cannot be swept")
        return v

    _positive = field_validator("max_concurrent")(at_least_one)
