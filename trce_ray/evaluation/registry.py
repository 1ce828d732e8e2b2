"""Evaluation suites that plug-ins add (the toy world's, for one): their prompt sets, the detector that scores them,
their metrics, a report table, the metrics a sweep plots, and checks of their own `eval.*` options.

A plug-in calls `register_suite` from its registration function (see `trce_ray.plugins`); the harness looks suites
up here by suite, set or set-kind name, which loads the installed plug-ins on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..plugins import load_plugins


@dataclass(frozen=True)
class PluginDetector:
    """A detector that fills one or more score columns of the harness's per-image results."""

    columns: tuple[str, ...]  # score columns it fills, e.g. ("toy", "toyfeat")
    feature_columns: tuple[str, ...]  # the columns holding float32 feature vectors (FID_gen's feature space)
    build: Callable[[str], Any]  # device -> scorer: scorer(images, column) -> one value per image (str or vector)
    weights: Callable[[], str]  # its weights file: path, size and mtime make the score-cache id
    missing: Callable[[], str | None]  # None when usable, else why not (a sentence)


@dataclass(frozen=True)
class SuitePlugin:
    name: str  # the `eval.suite` name
    sets: tuple[str, ...]  # its prompt-set names, in suite order
    load_set: Callable[[str, Any], Any]  # (set name, EvalConfig) -> PromptSet
    kinds: dict[str, tuple[str, ...]]  # PromptSet.kind -> detector columns its sets need, most important first
    detector: PluginDetector | None = None
    metrics: Callable[[str, str, list[dict], Any], dict[str, float]] | None = None  # (set, kind, results, EvalConfig)
    table: Any = None  # an evaluation.report.Table for `trce-ray report`
    plots: tuple[str, ...] = ()  # metrics a sweep plots when sweep.plot is empty
    options: dict[str, Callable[[Any], Any]] = field(default_factory=dict)  # EvalConfig field -> check (ValueError)


_SUITES: dict[str, SuitePlugin] = {}


def register_suite(suite: SuitePlugin) -> None:
    _SUITES[suite.name] = suite


def suites() -> dict[str, SuitePlugin]:
    """Every registered suite by name (plug-ins loaded)."""
    load_plugins()
    return _SUITES


def suite_of_set(name: str) -> SuitePlugin | None:
    return next((s for s in suites().values() if name in s.sets), None)


def suite_of_kind(kind: str) -> SuitePlugin | None:
    return next((s for s in suites().values() if kind in s.kinds), None)


def plugin_detectors() -> list[PluginDetector]:
    return [s.detector for s in suites().values() if s.detector is not None]


def plugin_columns() -> tuple[str, ...]:
    return tuple(c for d in plugin_detectors() for c in d.columns)


def plugin_feature_columns() -> tuple[str, ...]:
    return tuple(c for d in plugin_detectors() for c in d.feature_columns)


def check_option(name: str, value):
    """Run the checks registered suites declare for the `eval.<name>` field (none: the value is kept as is)."""
    for s in suites().values():
        if name in s.options:
            value = s.options[name](value)
    return value
