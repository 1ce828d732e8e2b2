"""How a sweep picks its points: `grid` (every combination), `random` (seeded draws) or `optuna` (Ray Tune's
OptunaSearch: TPE for one objective, NSGA-II for several).

A typed space names any config field and one distribution, in YAML:

    sweep:
      search: optuna
      num_samples: 12
      space:
        stage1.eta: {loguniform: [1e-3, 10]}
        train.beta: {uniform: [5, 20]}
        stage1.tokens: {choice: [[eot], [eot, key]]}

`grid` and `random` points are known before anything runs (so trial names and `--resume` are stable); `optuna`
points are asked from the sampler as trials finish. Every space is checked before a trial starts: its field must
exist and both ends of a range (every choice) must be a valid value of that field.
"""

from __future__ import annotations

import math
import random
from copy import deepcopy

from .config import TRCEConfig, set_dotted
from .config.base import validate
from .errors import ConfigError

KINDS = ("loguniform", "uniform", "choice")


def objectives(cfg: TRCEConfig) -> list[tuple[str, str]]:
    """`sweep.objectives` as (metric, "min"|"max") pairs; else `sweep.metric`/`sweep.mode` when set; else []."""
    if cfg.sweep.objectives:
        return [parse_objective(o) for o in cfg.sweep.objectives]
    return [(cfg.sweep.metric, cfg.sweep.mode)] if cfg.sweep.metric else []


def parse_objective(text: str) -> tuple[str, str]:
    """'toy/direct:min' -> ('toy/direct', 'min')."""
    metric, sep, mode = text.rpartition(":")
    if not sep or not metric or mode not in ("min", "max"):
        raise ConfigError(f"sweep objective {text!r} must look like METRIC:min or METRIC:max (e.g. toy/direct:min)")
    return metric, mode


def _apply(base: dict, params: dict) -> TRCEConfig:
    data = deepcopy(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    return validate(TRCEConfig, data)


def point_config(base: dict, params: dict) -> TRCEConfig:
    """`base` (a dumped TRCEConfig) with `params` (dotted field -> value) applied, validated."""
    try:
        return _apply(base, params)
    except ConfigError as err:
        raise ConfigError(f"sweep point {params}: {err}") from None


def full_space(cfg: TRCEConfig) -> dict[str, dict]:
    """`sweep.space` plus `sweep.grid` lists as choices (random and optuna searches treat a grid list so)."""
    return {**{k: {"choice": list(v)} for k, v in cfg.sweep.grid.items()}, **cfg.sweep.space}


def check_space(cfg: TRCEConfig) -> dict[str, dict]:
    """The space of a random or optuna sweep, each end of each range and each choice validated on `cfg`."""
    space = full_space(cfg)
    if not space:
        raise ConfigError(
            f"sweep.search {cfg.sweep.search} needs sweep.space (e.g. stage1.eta: {{loguniform: [1e-3, 10]}})"
        )
    base = cfg.model_dump(mode="json")
    for key, spec in space.items():
        ((kind, values),) = spec.items()
        for value in values:
            try:
                _apply(base, {key: value})
            except ConfigError as err:
                raise ConfigError(f"sweep.space {key} {kind} {values}: {err}") from None
    return space


def draw(space: dict[str, dict], rng: random.Random) -> dict:
    """One random point of `space` (log-uniform draws are uniform in log space)."""
    point = {}
    for key, spec in space.items():
        ((kind, values),) = spec.items()
        if kind == "choice":
            point[key] = deepcopy(values[rng.randrange(len(values))])
        elif kind == "uniform":
            point[key] = rng.uniform(values[0], values[1])
        else:
            point[key] = math.exp(rng.uniform(math.log(values[0]), math.log(values[1])))
    return point


def random_points(cfg: TRCEConfig) -> list[dict]:
    """`sweep.num_samples` seeded draws (the config's `seed`), so a rerun draws the same points."""
    space = check_space(cfg)
    rng = random.Random(cfg.seed)
    return [draw(space, rng) for _ in range(cfg.sweep.num_samples)]


def tune_space(space: dict[str, dict]) -> dict:
    """The space as Ray Tune domains, keyed by field (dots kept: the trainable reads the flat mapping)."""
    from ray import tune

    out = {}
    for key, spec in space.items():
        ((kind, values),) = spec.items()
        if kind == "choice":
            # Tune's choice keeps values as they are; lists are wrapped so Tune never reads them as nested spaces.
            out[key] = tune.choice(list(range(len(values))))
        else:
            out[key] = getattr(tune, kind)(values[0], values[1])
    return out


def decode(space: dict[str, dict], sampled: dict) -> dict:
    """A Tune-sampled point back to config values (choices are sampled by index)."""
    point = {}
    for key, spec in space.items():
        ((kind, values),) = spec.items()
        point[key] = deepcopy(values[sampled[key]]) if kind == "choice" else float(sampled[key])
    return point


def objective_key(i: int) -> str:
    """The name an objective is reported under to Tune (metric names hold '/', which Tune reads as nesting)."""
    return f"objective_{i}"


def optuna_search(cfg: TRCEConfig, space: dict[str, dict]):
    """OptunaSearch over `space`: TPE for one objective, NSGA-II for several; seeded by the config's `seed`."""
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError(
            "sweep.search optuna needs the optuna package: pip install optuna (or pick search random)"
        ) from None
    goals = objectives(cfg)
    if not goals:
        raise ConfigError("sweep.search optuna needs something to optimise: set sweep.objectives or sweep.metric")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = cfg.sweep.num_samples
    if len(goals) == 1:  # random start-up points, then TPE (optuna's default 10, fewer for small sweeps)
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(10, max(2, n // 2)))
    else:  # generations of population_size (optuna's default 50, fewer so a small sweep sees two generations)
        from .sweep_nsga2 import NSGAIISampler  # optuna's, picklable

        sampler = NSGAIISampler(seed=cfg.seed, population_size=max(2, min(50, n // 2)))
    keys = [objective_key(i) for i in range(len(goals))]
    modes = [mode for _, mode in goals]
    return OptunaSearch(
        space=None,
        metric=keys if len(keys) > 1 else keys[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=sampler,
        seed=None,
    ), tune_space(space)


def objective_values(cfg: TRCEConfig, metrics: dict) -> dict:
    """What a trial reports to Tune: each objective under `objective_key(i)`; a missing one fails the trial."""
    out = {}
    for i, (metric, _) in enumerate(objectives(cfg)):
        value = metrics.get(metric)
        if not isinstance(value, (int, float)) or math.isnan(value):
            known = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, float))[:6])
            raise ConfigError(f"objective {metric} is none of the trial's metrics ({known}, ...)")
        out[objective_key(i)] = float(value)
    return out
