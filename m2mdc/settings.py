"""Declared settings: a dataclass field per setting, carrying its default, its range or choices and
a one-line doc.

Step settings (m2mdc.steps), search knobs (m2mdc.knobs) and CLI flags are all read off these
declarations, so a default, a range or a description is written once. ``check_settings`` (called
from a dataclass's ``__post_init__``) turns a value outside its rule into a one-line UserError.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class Rule:
    """What values a setting takes: a number in an interval, or one of some choices."""

    doc: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    nullable: bool = False  # None allowed (means "not set" / "off")
    integer: bool = False
    data: bool = False  # structured data (e.g. a keep_cfg) checked by its step, not by a range

    def interval(self) -> str:
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        return f"{'(' if self.lo_open else '['}{lo:g}, {hi:g}{')' if self.hi_open else ']'}"

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` ("is outside [0, 1)", "is not one of a, b", ...), or None."""
        if value is None:
            return None if self.nullable else "must be set"
        if self.data:
            return None
        if self.choices is not None:
            ok = value in self.choices and isinstance(value, bool) == isinstance(self.choices[0], bool)
            return None if ok else f"is not one of {', '.join(map(str, self.choices))}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
            return "is not a number"
        if self.integer and not float(value).is_integer():
            return "is not a whole number"
        x = float(value)
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        if x < lo or x > hi or (self.lo_open and x == lo) or (self.hi_open and x == hi):
            return f"is outside {self.interval()}"
        return None

    def message(self, label: str, value: Any) -> str | None:
        """'label: 1.5 is outside [0, 1)' / "label: 'x' is not one of a, b" (None when ``value`` is fine)."""
        why = self.problem(value)
        if why is None:
            return None
        shown = repr(value) if isinstance(value, str) or self.choices is not None else f"{value}"
        return f"{label}: {shown} {why}" + (f" ({self.doc})" if why.startswith("is outside") else "")


def setting(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            hi_open: bool = False, choices: tuple | None = None, nullable: bool = False,
            integer: bool = False, data: bool = False) -> Field:
    """A dataclass field with its rule (see ``Rule``) in the metadata."""
    rule = Rule(doc, lo, hi, lo_open, hi_open, tuple(choices) if choices is not None else None, nullable, integer,
                data)
    return field(default=default, metadata={"rule": rule})


def rule_of(f: Field) -> Rule | None:
    return f.metadata.get("rule")


def rules(cls) -> dict[str, Rule]:
    """{field name: Rule} of a settings dataclass (fields without a rule are left out)."""
    return {f.name: rule_of(f) for f in fields(cls) if rule_of(f) is not None}


def defaults(cls) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def check_settings(obj, where: str = "") -> None:
    """UserError naming the first field whose value breaks its rule ('<where>: name: 1.5 is outside [0, 1) (doc)').
    A dict value (per-stage / per-block fractions) is checked entry by entry."""
    for name, rule in rules(type(obj)).items():
        value = getattr(obj, name)
        if rule.integer and isinstance(value, float) and value.is_integer():  # 2.0 from JSON means 2
            value = int(value)
            object.__setattr__(obj, name, value)
        per_key = isinstance(value, dict) and rule.choices is None and not rule.data
        items = [(f"{name}[{k}]", v) for k, v in value.items()] if per_key else [(name, value)]
        for label, v in items:
            msg = rule.message(label, v)
            if msg is not None:
                raise UserError(f"{where}: {msg}" if where else msg)
