"""Config plumbing: strict pydantic sections, and pydantic errors turned into one sentence naming the field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError


def at_least_one(cls, v):
    """Shared range checks, used as `field_validator("a", "b")(at_least_one)`; None passes (optional fields)."""
    if v is not None and v < 1:
        raise ValueError("must be >= 1")
    return v


def non_negative(cls, v):
    if v is not None and v < 0:
        raise ValueError("must be >= 0")
    return v


def positive(cls, v):
    if v is not None and not v > 0:
        raise ValueError("must be > 0")
    return v


def probability(cls, v):
    if v is not None and not 0 < v <= 1:
        raise ValueError("must be in (0, 1]")
    return v


class Section(BaseModel):
    """A frozen, strict-keyed config section. Frozen so a worker can never mutate what the driver resolved."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _field_name(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def sentence(err: ValidationError, prefix: str = "") -> str:
    """The first validation problem as one sentence, e.g. "config field 'stage1.eta' must be > 0 (got -1.0)"."""
    e = err.errors()[0]
    loc = e["loc"]
    name = prefix + _field_name(loc)
    kind = e["type"]
    if kind == "extra_forbidden":
        return f"unknown config key '{name}'"
    if kind == "missing":
        return f"config field '{name}' is required"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    msg = msg[0].lower() + msg[1:] if msg else msg
    got = e.get("input")
    return f"config field '{name}': {msg} (got {got!r})"


def validate(cls: type[BaseModel], data: dict, prefix: str = ""):
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(sentence(err, prefix)) from None
