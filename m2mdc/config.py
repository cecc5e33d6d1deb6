"""A configuration of knobs, in one place: its validated form, its flat form (``knob/stage`` names, as Ray
Tune's param space, MLflow params and --points files carry per-stage knobs), a per-stage spread, the
parse of tracked strings, and a stable hash. A per-stage knob is nested as {knob: {stage: value}} and flat as
``knob/stage`` entries; ``Config.from_tracked`` reads MLflow's strings back into numbers and booleans.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .errors import UserError
from .io import stable_hash
from .knobs import KNOBS

STAGE_SEP = "/"  # "planes_keep/layer1": a per-stage knob's value for one stage, flat


def flatten(config: dict, prefix: str = "") -> dict:
    """Nested per-stage values ({knob: {stage: v}}) as flat ``knob/stage`` entries."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}{STAGE_SEP}"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest(flat: dict, value=lambda v: v) -> dict:
    """Flat ``knob/stage`` entries nested as {knob: {stage: v}}, each value passed through ``value``."""
    out: dict = {}
    for k, v in flat.items():
        head, _, tail = k.partition(STAGE_SEP)
        if tail:
            out.setdefault(head, {})[tail] = value(v)
        else:
            out[k] = value(v)
    return out


def parse_tracked(text: Any):
    """A value as a tracking store returns it (MLflow params are strings): a bool, a number, or the string."""
    if not isinstance(text, str):
        return text
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def spread(value, stages: Iterable[str]) -> dict:
    """A per-stage value for every stage: one value for all, or a {stage: value} mapping as given."""
    return dict(value) if isinstance(value, dict) else {s: value for s in stages}


@dataclass(frozen=True)
class Config:
    """Knob name -> value (per-stage knobs nested as {stage: value}); every name is a knob of the table."""

    knobs: dict

    @classmethod
    def of(cls, knobs: dict) -> "Config":
        unknown = sorted(set(knobs) - set(KNOBS))
        if unknown:
            raise UserError(f"unknown knob(s) {', '.join(unknown)}; knobs: {', '.join(KNOBS)}")
        for name, v in knobs.items():
            if isinstance(v, dict) and not KNOBS[name].per_stage:
                raise UserError(f"{name} takes one value, not one per stage ({v})")
        return cls(dict(knobs))

    @classmethod
    def from_flat(cls, flat: dict) -> "Config":
        return cls.of(nest(flat))

    @classmethod
    def from_tracked(cls, params: dict, ignore: Iterable[str] = ()) -> "Config":
        """From a tracked run's params (strings; ``knob/stage`` names), leaving out the names in ``ignore``."""
        return cls.of(nest({k: v for k, v in params.items() if k not in set(ignore)}, parse_tracked))

    def flat(self) -> dict:
        return flatten(self.knobs)

    @property
    def hash(self) -> str:
        """12 hex digits, equal for equal configurations whatever their key order."""
        return stable_hash(self.knobs, 12)
