"""Sweep bookkeeping without running trials: ties on the metric, a failed trial's error sentence, the MLflow runs of a
sweep whose every trial failed (trce_ray/sweep.py)."""

from __future__ import annotations

import pytest

from trce_ray.config import load_config
from trce_ray.errors import ConfigError, TRCEError
from trce_ray.sweep import Trial, error_sentence, rank, summarise_sweep
from trce_ray.sweep_tracking import trial_run
from trce_ray.tracking import track


def _row(name, direct, preservation, neighbours=0.5, error=""):
    return {"trial": name, "stage1.eta": 1, "toy/direct": direct, "toy/preservation": preservation,
            "toy/neighbours": neighbours, "error": error}  # fmt: skip


def test_a_tie_on_the_metric_is_broken_by_preservation_higher_is_better():
    rows = [_row("t00", 0.0, 0.60), _row("t01", 0.0, 0.90), _row("t02", 0.0, 0.75), _row("t03", 0.1, 0.99)]
    best, ties, breakers = rank(rows, "toy/direct", "min")
    assert best["trial"] == "t01" and ties == ["t01"] and breakers == ["toy/preservation"]


def test_no_tie_needs_no_breaker_and_a_full_tie_is_reported():
    best, ties, breakers = rank([_row("a", 0.2, 0.5), _row("b", 0.1, 0.1)], "toy/direct", "min")
    assert (best["trial"], ties, breakers) == ("b", ["b"], [])
    best, ties, breakers = rank([_row("a", 0.0, 0.5), _row("b", 0.0, 0.5), _row("c", 0.5, 1.0)], "toy/direct", "min")
    assert best["trial"] == "a" and ties == ["a", "b"] and breakers == []
    assert rank([_row("a", 0.0, 0.5, error="x") | {"toy/direct": None}], "toy/direct", "min") == (None, [], [])


class _RayTaskError(Exception):
    """Shaped like Ray's wrapper: a traceback as text, the original exception as `cause`."""

    def __init__(self, text, cause):
        super().__init__(text)
        self.cause = cause


def test_error_sentence_is_the_trce_error_never_a_library_footer():
    inner = ConfigError("config field 'stage1.preserve_prompts': prompt file x.txt does not exist (got 'x.txt')")
    wrapped = _RayTaskError("Traceback ...\n  File ...\nConfigError: ...\n", inner)
    assert error_sentence(wrapped) == str(inner)
    footer = (
        'ray::tune_trainable() (pid=1)\n  File "x.py", line 3\nValueError: shapes (2,3) and (4,) differ\n'
        "    For further information visit https://errors.pydantic.dev/2.12/v/value_error\n"
    )
    assert error_sentence(RuntimeError(footer)) == "ValueError: shapes (2,3) and (4,) differ"


def test_every_trial_failed_marks_the_sweep_run_failed_with_each_trial_error(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = load_config(None, {"model.path": "toy", "stage1.concept": "toy-red", "tracking.uri": uri,
                             "output": str(tmp_path / "sw"), "sweep.grid": {"stage1.eta": [1, 2]}})  # fmt: skip
    trials = [Trial(f"t0{i}", {"stage1.eta": i}, cfg) for i in (1, 2)]
    rows = [{"trial": t.name, "stage1.eta": t.params["stage1.eta"], "error": f"boom {t.name}"} for t in trials]
    (tmp_path / "sw").mkdir()
    with pytest.raises(TRCEError, match="every trial of the sweep failed; first error: boom t01"):
        with track(cfg, "sweep", run_name="sweep sw") as parent:
            for t in trials:  # what tune_trainable does when a trial raises
                with pytest.raises(TRCEError), trial_run(t.cfg, t.name, "sw", parent.run_id):
                    raise TRCEError(f"boom {t.name}")
            summarise_sweep(cfg, trials, rows, tmp_path / "sw", parent)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("trce-ray").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {k: (r.data.tags["trce.command"], r.info.status) for k, r in by_name.items()} == {
        "sweep sw": ("sweep", "FAILED"),
        "t01": ("sweep-trial", "FAILED"),
        "t02": ("sweep-trial", "FAILED"),
    }
    assert "boom t02" in by_name["t02"].data.tags["trce.error"]
    assert (tmp_path / "sw" / "sweep.csv").is_file()
