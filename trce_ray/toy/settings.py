"""Reading a toy config section: YAML file, then dotted overrides, validated once (errors name the field)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from ..config import read_yaml, set_dotted
from ..config.base import Section, validate

S = TypeVar("S", bound=Section)


def load_section(cls: type[S], path: str | Path | None = None, overrides: dict | None = None) -> S:
    data = read_yaml(path) if path else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    return validate(cls, data)
