"""The knob table: the flat configuration a search samples and the compress CLI takes as flags.

A knob is one named value (``prune_ratio``, ``kd_lr``, ...). Its range and default come from the
step setting it sets wherever there is one (``kd_lr`` is the kd step's ``lr``: one default, one
range), so the spaces' validation, the CLI flags and the compiler agree by construction. Only
this table and the compiler (m2mdc.compiler) name knobs. The order below is the order a search
space lists them in (which the sampler sees; keep it stable).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .settings import Rule
from .steps import STEPS

ORDERS = ("bpm", "bmp", "pbm", "pmb", "mbp", "mpb")  # orders of the structural edits: blocks, planes, mid
TAIL_ORDERS = ("sq", "qs")  # sparsity before / after QAT
SCHEDULES = ("progressive", "one-shot")
RANKINGS = ("stage", "global")
SEARCH_RECIPES = ("fractions", "allocator")  # what a search space's mode selects


@dataclass(frozen=True)
class Knob:
    name: str
    rule: Rule
    default: Any
    sets: tuple[str, ...] = ()  # "step.setting" it sets: its range and meaning come from there
    recipes: tuple[str, ...] = SEARCH_RECIPES  # the compile recipes that read it (spaces refuse it elsewhere)
    per_stage: bool = False  # a space may give one value per stage
    adds: str | None = None  # a step the compiler appends (with this setting) when the value is not the default
    space: bool = True  # may appear in a search space

    @property
    def doc(self) -> str:
        return self.rule.doc

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _setting(step: str, name: str):
    f = next(f for f in fields(STEPS[step].settings) if f.name == name)
    return f.metadata["rule"], f.default


def from_setting(name: str, target: str, *, also: tuple[str, ...] = (), default=None, doc: str | None = None,
                 **kw) -> Knob:
    """A knob that sets a step setting (``"kd.lr"``, and any in ``also``), taking its rule (and default)
    from the first. A knob is never None, whatever the setting allows."""
    step, setting = target.split(".")
    rule, step_default = _setting(step, setting)
    rule = Rule(doc or rule.doc, rule.lo, rule.hi, rule.lo_open, rule.hi_open, rule.choices, False, rule.integer)
    return Knob(name, rule, step_default if default is None else default, (target, *also), **kw)


def choice(name: str, choices: tuple, default, doc: str, **kw) -> Knob:
    return Knob(name, Rule(doc, choices=choices), default, **kw)


def number(name: str, default, doc: str, lo=None, hi=None, lo_open=False, hi_open=False, **kw) -> Knob:
    return Knob(name, Rule(doc, lo, hi, lo_open, hi_open), default, **kw)


_FRACTIONS = ("fractions",)
_M2MDC = ("fractions", "m2mdc", "m2mdc+qat")
_KD = ("fractions", "allocator", "m2mdc", "m2mdc+qat", "pqd")  # "pqd" stands for every PQD order
KNOBS: dict[str, Knob] = {k.name: k for k in (
    from_setting("prune_ratio", "block_prune.ratio", default=0.5, recipes=_M2MDC),
    from_setting("planes_keep", "planes.keep", recipes=_M2MDC, per_stage=True),
    from_setting("mid_keep", "mid.keep", recipes=_M2MDC),
    number("depth_share", 0.5, "share of the MACs to remove that comes from removing blocks (allocator)", 0, 1,
           recipes=("allocator",)),
    from_setting("alpha", "kd.alpha", recipes=_KD),
    from_setting("beta", "kd.beta", recipes=_KD),
    from_setting("kd_lr", "kd.lr", recipes=_KD),
    from_setting("kl_weight", "kd.kl_weight", recipes=_KD),
    from_setting("sparsity", "sparsity.target", default=0.0, doc="unstructured sparsity target (0 = no sparsity "
                 "step; PQD recipes default to 0.5)", recipes=("fractions", "allocator", "pqd")),
    from_setting("signal", "planes.signal", also=("mid.signal", "widths.signal"), recipes=("fractions", "allocator", "m2mdc", "m2mdc+qat")),
    choice("order", ORDERS, "bpm", "order of the structural edits (b blocks, p planes, m mid; bpm = the paper's)",
           recipes=_FRACTIONS),
    choice("tail_order", TAIL_ORDERS, "sq", "sparsity before (sq) or after (qs) QAT"),
    choice("qat", (False, True), False, "INT8 quantisation-aware training (then KD under fake-quant)"),
    from_setting("temperature", "kd.temperature", recipes=_KD),
    number("min_keep", 0.0625, "smallest share of a group's channels the allocator's width phase keeps", 0, 1,
           lo_open=True, recipes=("allocator",)),
    choice("schedule", SCHEDULES, "progressive", "progressive: a KD repair after every structural edit (the paper's); "
           "one-shot: all edits, then one KD repair with all their epochs", recipes=("fractions", "allocator")),
    choice("ranking", RANKINGS, "stage", "stage: widths from the per-stage / per-block fractions; global: one "
           "ranking of every channel by its normalised group-L1 importance across stages (Torch-Pruning's global "
           "pruning), keeping the fractions' total", recipes=("fractions",)),
    number("cost_target", 1.0, "share of the GMACs budget the architecture is projected onto: its widths scale "
           "down to it or, with compile_config(project='both'), up towards full width, so the other structural "
           "knobs describe shape alone", 0, 1, lo_open=True, recipes=_FRACTIONS),
)}


def knob_for(target: str) -> str:
    """The knob that sets step setting ``target`` ("kd.lr" -> its knob): code outside this table and
    the compiler speaks of settings, never of knob names."""
    for name, k in KNOBS.items():
        if target in k.sets:
            return name
    raise KeyError(f"no knob sets {target}")


def setting_config(values: dict) -> dict:
    """A knob configuration from step-setting values: {"block_prune.ratio": 0.5, "kd.lr": 1e-4} -> knobs."""
    return {knob_for(target): v for target, v in values.items()}


def resolve(config: dict, recipe: str) -> dict:
    """The knob values a recipe reads: the config's, else the table's defaults."""
    family = "pqd" if recipe not in ("fractions", "allocator", "m2mdc", "m2mdc+qat") else recipe
    return {name: config.get(name, k.default) for name, k in KNOBS.items() if family in k.recipes}


def step_settings(values: dict, step: str) -> dict:
    """{setting: value} of ``step`` that the given knob values set (e.g. kd_lr -> kd.lr)."""
    out = {}
    for name, value in values.items():
        for target in KNOBS[name].sets if name in KNOBS else ():
            s, setting = target.split(".")
            if s == step:
                out[setting] = value
    return out


def summarise(config: dict, skip_defaults: bool = True) -> str:
    """A short line of the knobs set in ``config`` (flat ``knob/stage`` entries or nested dicts; values
    may be strings, as MLflow returns params), in table order, leaving out knobs at their default."""
    parts = []
    for name, k in KNOBS.items():
        value = config.get(name)
        if value is None:
            per = {key.split("/", 1)[1]: v for key, v in config.items() if key.startswith(name + "/")}
            value = per or None
        if value is None or (skip_defaults and _short(value) == _short(k.default)):
            continue
        parts.append(f"{name}={_short(value)}")
    return " ".join(parts) or "(all defaults)"


def _short(v) -> str:
    if isinstance(v, dict):
        return "/".join(_short(x) for x in v.values())
    if isinstance(v, str):
        try:
            v = float(v) if v not in ("True", "False") else v
        except ValueError:
            return v
    if isinstance(v, bool) or isinstance(v, str):
        return str(v)
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def parse_labelled_configs(texts: list[str], flag: str = "--config") -> dict[str, dict]:
    """``LABEL=JSON`` arguments (a configuration of your own, as a search trial takes it), each a label ->
    knob values; names and values checked against the knob table, so a typo is one line before anything
    is built. Labels are unique."""
    import json

    from .errors import UserError

    configs: dict[str, dict] = {}
    for text in texts:
        label, sep, body = text.partition("=")
        label = label.strip()
        try:
            config = json.loads(body) if sep and label else None
        except ValueError as e:
            raise UserError(f"{flag} {text!r}: the part after '=' is not JSON ({e.msg}); e.g. {flag} "
                            f"'shallow={{\"prune_ratio\": 0.8, \"planes_keep\": 1.0, \"mid_keep\": 1.0}}'") from None
        if not isinstance(config, dict):
            raise UserError(f"{flag} {text!r} must be LABEL=JSON object of knob values, e.g. "
                            f"'shallow={{\"prune_ratio\": 0.8}}'")
        if label in configs:
            raise UserError(f"{flag} label {label!r} is given twice; name each configuration once")
        unknown = sorted(set(config) - set(KNOBS))
        if unknown:
            raise UserError(f"{flag} {label}: unknown knob(s) {', '.join(unknown)}; knobs: {', '.join(KNOBS)}")
        for name, value in config.items():
            # a per-stage knob takes one value, or a {stage: value} object (as a trial's config holds it)
            each = value.items() if KNOBS[name].per_stage and isinstance(value, dict) else [(None, value)]
            for stage, v in each:
                msg = KNOBS[name].rule.message(f"{flag} {label}: {name}" + (f"/{stage}" if stage else ""), v)
                if msg is not None:
                    raise UserError(msg)
        configs[label] = config
    return configs
