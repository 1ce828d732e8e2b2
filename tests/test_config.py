"""Config validation: every bad value is one sentence naming the field; YAML + dotted overrides compose."""

import pytest

from trce_ray.config import load_config, parse_set
from trce_ray.errors import ConfigError


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("stage1.templates", 0, "config field 'stage1.templates': must be >= 1 (got 0)"),
        ("stage1.ridge", -1.0, "config field 'stage1.ridge': must be >= 0 (got -1.0)"),
        ("cache.keep_fraction", 2, "config field 'cache.keep_fraction': must be in (0, 1] (got 2)"),
        ("train.lr", 0, "config field 'train.lr': must be > 0 (got 0)"),
        ("train.max_steps", 0, "config field 'train.max_steps': must be >= 1 (got 0)"),
        ("eval.limit", 0, "config field 'eval.limit': must be >= 1 (got 0)"),
        ("eval.nudenet_threshold", 1.5, "config field 'eval.nudenet_threshold': must be in (0, 1] (got 1.5)"),
        ("sweep.max_concurrent", 0, "config field 'sweep.max_concurrent': must be >= 1 (got 0)"),
        ("train.epochs", "three", "config field 'train.epochs'"),
        ("model.dtype", "float8", "config field 'model.dtype'"),
        ("tracking.nope", 1, "unknown config key 'tracking.nope'"),
    ],
)
def test_range_and_type_errors_name_the_field(key, value, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, {"model.path": "toy", key: value})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_optional_fields_accept_none_and_defaults_are_the_papers():
    cfg = load_config(None, {"model.path": "toy", "train.max_steps": None, "eval.limit": None})
    assert cfg.train.max_steps is None and cfg.eval.limit is None
    train = cfg.train
    assert (train.beta, train.margin, train.lam, train.lr, train.epochs) == (15.0, 0.01, 100.0, 1e-6, 3)
    assert (cfg.cache.steps, cfg.cache.erase_steps, cfg.eval.nudenet_threshold) == (50, 25, 0.45)


def test_yaml_then_overrides_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {path: toy}\nstage1: {concept: sexual, eta: 0.5}\n")
    key, value = parse_set("stage1.tokens=[eot, key]")
    cfg = load_config(f, {"stage1.eta": 0.02, key: value})
    assert cfg.stage1.eta == 0.02 and cfg.stage1.tokens == ["eot", "key"] and cfg.stage1.concept == "sexual"
    with pytest.raises(ConfigError, match="is not valid YAML"):
        f.write_text("model: [unclosed\n")
        load_config(f)
    with pytest.raises(ConfigError, match="'model' is a value, not a section"):
        load_config(None, {"model": "toy", "model.path": "x"})
