"""The `--pick` rule grammar (sweep_pick.py has it in full), parsed without any other trce_ray module so the config
validates rules early."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ConfigError

OPS = (">=", "<=", "==", ">", "<")
ORIGINAL = "original"
ORIGINAL_DIR = "original"
SLACK = 1e-9
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_EXAMPLE = "e.g. 'min toy/direct where toy/preservation >= original - 0.05'"


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    number: float  # the threshold, or what `arith` applies to the original's value
    arith: str | None = None  # None: a plain number; "": the original's value; "+", "-", "*": with `number`

    @property
    def uses_original(self) -> bool:
        return self.arith is not None

    def threshold(self, original: dict | None) -> float:
        if not self.uses_original:
            return self.number
        base = float(original[self.metric])
        return {"": base, "+": base + self.number, "-": base - self.number, "*": base * self.number}[self.arith]

    def holds(self, value: float, threshold: float) -> bool:
        slack = SLACK * max(1.0, abs(threshold))
        return {
            ">=": value >= threshold - slack,
            "<=": value <= threshold + slack,
            ">": value > threshold + slack,
            "<": value < threshold - slack,
            "==": abs(value - threshold) <= slack,
        }[self.op]


@dataclass(frozen=True)
class Rule:
    text: str
    mode: str  # "min" or "max"
    metric: str
    conditions: tuple[Condition, ...] = ()

    @property
    def needs_original(self) -> bool:
        return any(c.uses_original for c in self.conditions)


def _condition(text: str, rule: str) -> Condition:
    m = re.fullmatch(r"\s*(\S+?)\s*(>=|<=|==|>|<)\s*(.+?)\s*", text)
    if not m:
        raise ConfigError(
            f"pick rule {rule!r}: condition {text.strip()!r} must look like METRIC OP VALUE, OP one of >= <= > < =="
        )
    metric, op, value = m.groups()
    if re.fullmatch(_NUMBER, value):
        return Condition(metric, op, float(value))
    v = re.fullmatch(rf"{ORIGINAL}(?:\s*([-+*])\s*({_NUMBER}))?", value)
    if not v:
        raise ConfigError(
            f"pick rule {rule!r}: {value!r} must be a number or original, original + N, original - N, original * N"
        )
    return Condition(metric, op, float(v[2]) if v[2] else 0.0, v[1] or "")


def parse_rule(text: str) -> Rule:
    """'min toy/direct where toy/preservation >= original - 0.05' -> Rule; a malformed rule is one ConfigError."""
    m = re.fullmatch(r"\s*(min|max)\s+(\S+)(?:\s+where\s+(.+?))?\s*", text or "", re.S)
    if not m or m[2] in ("where", "and"):
        raise ConfigError(
            f"pick rule {text!r} must look like 'min|max METRIC [where METRIC OP VALUE and ...]' ({_EXAMPLE})"
        )
    parts = re.split(r"\s+and\s+", m[3]) if m[3] else []
    return Rule(text.strip(), m[1], m[2], tuple(_condition(p, text) for p in parts))
