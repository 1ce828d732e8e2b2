"""Reading a toy config section: YAML file, then dotted overrides, validated once (errors name the field)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml

from ..config import read_yaml, set_dotted
from ..config.base import Section, validate

S = TypeVar("S", bound=Section)


def load_section(cls: type[S], path: str | Path | None = None, overrides: dict | None = None) -> S:
    data = read_yaml(path) if path else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    return validate(cls, data)


class Recipe(Section):
    """A training recipe: read like every toy section, and written back as the YAML that reproduces a run."""

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict | None = None):
        """Read a YAML file (optional), apply dotted overrides, validate (errors name the field)."""
        return load_section(cls, path, overrides)
