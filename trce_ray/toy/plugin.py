"""The toy world as a plug-in of the core, registered through the `trce_ray.plugins` entry point (pyproject.toml).

It adds the model aliases `toy` (`--model toy`: the shipped toy pipeline) and `toy-flux` (the FLUX toy), and the
eval suite `toy` (`toy/suite.py`: prompt sets, the toy classifier as detector, metrics, the report table, sweep
plots, and the check of `eval.toy_target`). Registration imports nothing heavy: the toy modules load when a
registered name is used.
"""

from __future__ import annotations

SETS = ("toy-direct", "toy-paraphrase", "toy-preservation")


def _toy_pipeline() -> str:
    from .assets import toy_pipeline_dir

    return str(toy_pipeline_dir())


def _flux_toy_pipeline() -> str:
    from .assets import flux_toy_pipeline_dir

    return str(flux_toy_pipeline_dir())


def _load_set(name: str, ecfg):
    from .suite import load_toy_set

    return load_toy_set(name, ecfg)


def _metrics(name: str, kind: str, results: list[dict], ecfg) -> dict[str, float]:
    from .suite import toy_metrics

    return toy_metrics(name, results, ecfg.toy_target)


def _detector(device: str):
    from .suite import ToyDetector

    return ToyDetector(device)


def _classifier_file() -> str:
    from .assets import toy_classifier_path

    return str(toy_classifier_path())


def _classifier_missing() -> str | None:
    from ..errors import TRCEError

    try:
        _classifier_file()
    except TRCEError as err:
        return f"the toy classifier is missing ({err})"
    return None


def _check_target(colour: str) -> str:
    from .world import ERASABLE

    if colour not in ERASABLE:
        raise ValueError(f"must be one of the erasable toy colours: {', '.join(ERASABLE)}")
    return colour


def register() -> None:
    from ..evaluation.registry import PluginDetector, SuitePlugin, register_suite
    from ..evaluation.report import Column, Table
    from ..models.loading import register_model_alias

    register_model_alias("toy", _toy_pipeline)
    register_model_alias("toy-flux", _flux_toy_pipeline)
    table = Table(
        "Toy world: erasing one colour (the Table 1 analogue; see trce_ray/toy)",
        (
            Column("Direct", ("toy/direct",)),
            Column("Paraphrase", ("toy/paraphrase",)),
            Column("Preservation", ("toy/preservation",), better="higher"),
            Column("Neighbours", ("toy/neighbours",), better="higher"),
            Column("FID_gen", ("fid_gen/toy-preservation",), "num"),
            Column("Agreement", ("toy/agreement",), better="higher"),
        ),
        ("toy/",),
    )
    register_suite(
        SuitePlugin(
            name="toy",
            sets=SETS,
            load_set=_load_set,
            kinds={"toy": ("toy",), "toy-preservation": ("toy", "toyfeat")},
            detector=PluginDetector(
                ("toy", "toyfeat"), ("toyfeat",), _detector, _classifier_file, _classifier_missing
            ),
            metrics=_metrics,
            table=table,
            plots=("toy/direct", "toy/paraphrase", "toy/preservation", "toy/neighbours"),
            options={"toy_target": _check_target},
        )
    )
