"""Search spaces: YAML files that say which knobs of the compression pipeline a search samples.

A space file names an architecture, a mode and its parameters; every parameter is either fixed
(a scalar), a float range (``{low, high}``, ``log: true`` for log-uniform) or a set of choices
(``{choices: [...]}``). ``load_space`` validates everything against the architecture and the knob
table (m2mdc.knobs: names, ranges, defaults, which mode reads them) before any search starts, so
a bad file is one clear error, not a failed trial. Knobs a file leaves out are fixed at their
defaults.

Modes (the compiler's search recipes, m2mdc.compiler): ``fractions`` samples block and width
fractions (a configuration over budget is projected onto it before training); ``allocator``
samples only how the budget splits between depth and width and lets the allocator spend it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2mdc.config import nest
from m2mdc.errors import UserError
from m2mdc.knobs import KNOBS, ORDERS, SEARCH_RECIPES as MODES, TAIL_ORDERS  # noqa: F401 - re-exported

SPACES_DIR = Path(__file__).resolve().parent


def knobs_of(mode: str) -> list[str]:
    """The knobs a space of this mode may set, in table order (every one is present in a loaded space)."""
    return [n for n, k in KNOBS.items() if k.space and mode in k.recipes]


@dataclass(frozen=True)
class Param:
    name: str
    fixed: Any = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    @property
    def sampled(self) -> bool:
        return self.low is not None or self.choices is not None

    def admits(self, value) -> bool:
        """Whether a configuration with this value lies in the space (a fixed knob admits only its value)."""
        if self.choices is not None:
            return value in self.choices
        if self.low is not None:
            return isinstance(value, (int, float)) and self.low <= value <= self.high
        return value == self.fixed

    def to_tune(self):
        from ray import tune

        if self.choices is not None:
            return tune.choice(list(self.choices))
        if self.low is not None:
            return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)
        return self.fixed


@dataclass(frozen=True)
class Space:
    """A validated search space; ``params`` maps a flat name (``planes_keep/layer1`` for per-stage
    knobs) to its Param; every known knob is present (unlisted ones fixed at their defaults)."""

    arch: str
    mode: str
    params: dict[str, Param]
    source: str  # the file it came from (or "<dict>")
    text: str  # canonical JSON of the validated content: what resume compares

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    def param_space(self) -> dict:
        """The nested Ray Tune param_space (a per-stage knob nests as {knob: {stage: ...}})."""
        return nest(self.params, lambda p: p.to_tune())

    def sampled_names(self) -> list[str]:
        return [n for n, p in self.params.items() if p.sampled]


def space_path(name_or_path: str) -> Path:
    """A path, or the name of a bundled space. An architecture's name falls back on its family's
    file (``resnet101`` -> spaces/resnet.yaml) and then on spaces/default.yaml, whose per-stage knobs
    expand to the stages the adapter reports: a new architecture needs no file of its own."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    if (SPACES_DIR / f"{name_or_path}.yaml").exists():
        return SPACES_DIR / f"{name_or_path}.yaml"
    from m2mdc.models import BASE_ARCHS, get_adapter, split_arch

    base = split_arch(name_or_path)[0]
    if base in BASE_ARCHS:
        for candidate in (base, get_adapter(base).family, "default"):
            if (SPACES_DIR / f"{candidate}.yaml").exists():
                return SPACES_DIR / f"{candidate}.yaml"
    return SPACES_DIR / f"{name_or_path}.yaml"


def load_space(name_or_path: str, arch: str | None = None) -> Space:
    """Read and validate a space file; UserError names the file and the offending entry."""
    import yaml

    path = space_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError:
        bundled = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
        raise UserError(f"search space {name_or_path!r} not found (no file {path}); bundled spaces: {bundled}") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"search space {path} is not valid YAML ({first})") from None
    return parse_space(raw, str(path), arch)


def parse_space(raw: Any, source: str = "<dict>", arch: str | None = None) -> Space:
    from m2mdc.models import BASE_ARCHS, get_adapter, split_arch

    where = f"search space {source}"
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping with 'arch', 'mode' and 'params'")
    unknown_top = sorted(set(raw) - {"arch", "mode", "params", "description"})
    if unknown_top:
        raise UserError(f"{where} has unknown top-level key(s) {unknown_top}; use arch, mode, params, description")
    space_arch = raw.get("arch")
    families = {get_adapter(a).family for a in BASE_ARCHS}
    if space_arch not in (*BASE_ARCHS, *sorted(families), "any"):
        raise UserError(f"{where}: arch {space_arch!r} is not one of {', '.join(BASE_ARCHS)} (or a family: "
                        f"{', '.join(sorted(families))}, or any)")
    base = split_arch(arch)[0] if arch is not None else None
    if base is not None and space_arch not in (base, get_adapter(base).family, "any"):
        raise UserError(f"{where} is for {space_arch}, not --arch {arch}; pass a space for {arch}")
    if space_arch not in BASE_ARCHS:  # a family's or any architecture's space
        if arch is None:
            raise UserError(f"{where} is a {space_arch} space; name the architecture it is for (--arch)")
        space_arch = arch  # its per-stage knobs take this architecture's stages
    elif arch is not None:
        space_arch = arch  # the stem may differ from the file's name; the stages do not
    mode = raw.get("mode", "fractions")
    if mode not in MODES:
        raise UserError(f"{where}: mode {mode!r} is not one of {', '.join(MODES)}")
    entries = raw.get("params") or {}
    if not isinstance(entries, dict):
        raise UserError(f"{where}: params must be a mapping of knob name to a value, a range or choices")
    allowed = knobs_of(mode)
    bad = sorted(set(entries) - set(allowed))
    if bad:
        raise UserError(f"{where}: unknown or, in mode {mode}, unusable parameter(s) {bad}; allowed: {', '.join(allowed)}")
    adapter = get_adapter(space_arch)
    stages = adapter.stages(adapter.base_model(10))
    params: dict[str, Param] = {}
    for name in allowed:
        knob = KNOBS[name]
        spec = entries.get(name, knob.default)
        if knob.per_stage and isinstance(spec, dict) and spec.get("per_stage"):
            rest = {k: v for k, v in spec.items() if k != "per_stage"}
            for stage in stages:
                params[f"{name}/{stage}"] = _param(f"{name}/{stage}", knob.rule, rest, where)
        else:
            params[name] = _param(name, knob.rule, spec, where)
    canon = json.dumps({"arch": space_arch, "mode": mode,
                        "params": {n: {k: v for k, v in vars(p).items() if v is not None and k != "name"}
                                   for n, p in params.items()}}, sort_keys=True, default=list)
    return Space(space_arch, mode, params, source, canon)


def _param(name: str, rule, spec: Any, where: str) -> Param:
    at = f"{where}: {name}"
    if isinstance(spec, dict):
        keys = set(spec)
        if keys == {"choices"}:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise UserError(f"{at}: choices must be a non-empty list")
            if len(set(map(repr, choices))) != len(choices):
                raise UserError(f"{at}: choices {choices} repeat a value")
            for c in choices:
                _check_value(at, rule, c)
            return Param(name, choices=tuple(choices))
        if keys <= {"low", "high", "log"} and {"low", "high"} <= keys:
            if rule.choices is not None:
                raise UserError(f"{at} is categorical; give choices: [...] or a single value, not a range")
            lo, hi, log = spec["low"], spec["high"], bool(spec.get("log", False))
            for v in (lo, hi):
                _check_value(at, rule, v)
            if not float(lo) < float(hi):
                raise UserError(f"{at}: low {lo} must be below high {hi} (a fixed value is written without a range)")
            if log and float(lo) <= 0:
                raise UserError(f"{at}: a log range needs low > 0, got {lo}")
            return Param(name, low=float(lo), high=float(hi), log=log)
        raise UserError(f"{at} must be a value, {{low, high[, log]}} or {{choices: [...]}}; got keys {sorted(keys)}")
    _check_value(at, rule, spec)
    return Param(name, fixed=spec)


def _check_value(at: str, rule, v: Any) -> None:
    msg = rule.message(at, v)
    if msg is not None:
        raise UserError(msg)
