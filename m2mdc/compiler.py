"""One compiler from a flat configuration of knobs to a plan: validated plan, final keep_cfg and its
cost, in one call, before any training. Used by the compress CLI, the search's trials, the
baselines, the paper table and the allocator mode; the only place that maps knobs onto steps.

Recipes:

* ``fractions`` (a search's default): block pruning by the teacher's cached MI scores, planes and
  mid widths as fractions of the full widths, the three edits in the sampled ``order``, each
  followed by a KD repair, then optional sparsity and QAT (each followed by KD, in ``tail_order``).
  The final architecture is known before training, so it is *projected* onto its cost target
  (``budget_gmacs`` x the ``cost_target`` knob): a configuration over the target has every width
  fraction scaled by one factor s in (0, 1], the largest that fits (bisection); with
  ``project="both"`` one under its target is scaled up too, s > 1, towards the teacher's widths, and
  the last conv groups a common factor leaves unspent are filled in (within 2 % of the target). The
  fractions then say the shape, the target the cost. A configuration that reaches full width under
  its target stays there (``full_width``, ``under_target``): never stretched past the teacher. Only a
  configuration whose kept blocks cannot fit even at one channel per group is infeasible; it
  compiles to no plan, and the search reports it to the sampler.
* ``allocator``: the information-guided allocator (m2mdc.allocate) spends the budget, split
  between depth and width by ``depth_share``.
* ``m2mdc``, ``m2mdc+qat`` and the PQD orders: the papers' named plans (m2mdc.presets).

The training budget (KD epochs T, batches per epoch, batch size, seed; PQD's total epochs and
split) is an argument, not a knob: a search fixes it by profile, the compress CLI by flags.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .allocate import allocate, allocation_plan
from .cost import CostModel
from .distill import KDConfig
from .errors import UserError
from .knobs import KNOBS, knob_for, resolve, step_settings
from .models.base import Adapter
from .presets import PQD_EPOCHS, PQD_ORDERS, PQD_SPARSITY, PQD_SPLIT, PRESETS, m2mdc_plan, pqd_plan
from .prune_blocks import keep_blocks_after, select_blocks_to_prune
from .slicing import PROBE_SIGNALS, SIGNALS, keep_width
from .steps import plan_reports, validate_plan

RECIPES = ("fractions", "allocator", *PRESETS)
KD_EPOCHS = KDConfig.epochs
BISECTION_STEPS = 40


@dataclass
class Target:
    """What the compiler needs to know about the teacher: its structure, cost model and MI ranking
    (a dict, or a function computing it on first use: recipes that remove no block by MI never
    pay for it). ``channel_scores`` (signal -> {group: scores}) only for the allocator recipe."""

    adapter: Adapter
    teacher: nn.Module  # the full model (only its structure is read)
    cost: CostModel
    block_scores: dict[str, float] | Callable[[], dict[str, float]]
    channel_scores: dict = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        if callable(self.block_scores):
            self.block_scores = self.block_scores()
        return self.block_scores


class ChannelScores(dict):
    """signal -> {group: channel scores} of a teacher's planes / mid groups (what the allocator values
    width by), computed on first use of a signal."""

    def __init__(self, ctx, probe_samples: int = 5000, bins: int = 10):
        super().__init__()
        self.ctx, self.probe_samples, self.bins = ctx, probe_samples, bins

    def __missing__(self, signal: str):
        from .data import probe_loader
        from .slicing import channel_scores

        ctx = self.ctx
        groups = [g for g in ctx.adapter.group_widths(ctx.teacher) if g.split(":")[0] in ("planes", "mid", "mid2")]
        probe = probe_loader(ctx.ds, ctx.device, max_samples=self.probe_samples) if signal in PROBE_SIGNALS else None
        self[signal] = channel_scores(ctx.teacher, ctx.adapter, groups, signal, probe, self.bins)
        return self[signal]

    def __contains__(self, signal) -> bool:
        return signal in SIGNALS

    def __reduce__(self):  # shipped to trials as the scores computed so far (no Context inside)
        return dict, (dict(self.items()),)


def target_of(ctx, bins: int = 10, probe_samples: int = 5000) -> Target:
    """The compile target of a Context's teacher: MI block scores from its cache and channel scores,
    each computed when first needed."""
    return Target(ctx.adapter, ctx.teacher, CostModel(ctx.adapter, ctx.ds.num_classes, ctx.ds.resolution),
                  lambda: ctx.get_block_scores(bins, probe_samples), ChannelScores(ctx, probe_samples, bins))


def dry_target(arch: str, num_classes: int, resolution: int) -> Target:
    """A target without a trained teacher (equal block scores): compiling against it checks a
    configuration's values and plan before any teacher is trained; its architecture is not the real one."""
    from .models import get_adapter

    adapter = get_adapter(arch)
    teacher = adapter.base_model(num_classes)
    groups = {g: w for g, w in adapter.group_widths(teacher).items() if g.split(":")[0] in ("planes", "mid", "mid2")}
    flat = {g: torch.ones(w) for g, w in groups.items()}
    return Target(adapter, teacher, CostModel(adapter, num_classes, resolution),
                  {b: 0.0 for b in adapter.blocks(teacher)}, {s: flat for s in SIGNALS})


@dataclass
class CompiledPlan:
    plan: list[dict]  # validated, every setting filled in ([] when infeasible)
    keep_cfg: dict  # the architecture the plan ends with
    gmacs: float  # its GMACs (<= budget when feasible and a budget was given)
    sampled_gmacs: float  # GMACs of the configuration as given, before projection
    width_scale: float = 1.0  # s: the factor every width fraction was multiplied by (1 = not projected)
    feasible: bool = True
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # what the recipe decided on the way (the allocator's result)
    # with a latency budget: predicted_ms / spread_pct / backend of the final architecture, sampled_ms of
    # the configuration before projection (None when no latency budget)
    latency: dict | None = None
    violation: float = 0.0  # infeasible: how far over a budget the configuration stays (relative, > 0)
    target_gmacs: float | None = None  # the cost the widths were projected onto (budget x cost_target)
    full_width: bool = False  # every width is the teacher's: a configuration under its target stays there

    @property
    def projected(self) -> bool:
        return self.width_scale != 1.0

    @property
    def under_target(self) -> bool:
        """Projected up as far as it goes (every width full) and still under its cost target: the case of
        a deep cut whose kept blocks cost less than the target at the teacher's widths."""
        return self.full_width and self.target_gmacs is not None and self.gmacs < self.target_gmacs * 0.98

    @property
    def kd_steps(self) -> int:
        return sum(s["step"] == "kd" for s in self.plan)

    @property
    def reports(self) -> int:
        """Progress reports the plan emits (one per training epoch)."""
        return plan_reports(self.plan) if self.plan else 0


def compile_config(config: dict, target: Target, *, recipe: str = "fractions", budget_gmacs: float | None = None,
                   training: dict | None = None, bins: int = 10, probe_samples: int = 5000,
                   budget_ms: float | None = None, latency: Callable[[dict, bool], dict] | None = None,
                   project: str = "down") -> CompiledPlan:
    """The plan of ``config`` (knob name -> value; missing knobs take the table's defaults).

    ``training``: the KD repairs' budget (epochs, steps_per_epoch, batch_size, seed) and, for the
    PQD recipes, ``pqd_epochs`` and ``split``. ``bins`` / ``probe_samples`` are the MI settings the
    ``block_scores`` were computed with. ``budget_ms`` with ``latency`` (an m2mdc.arch_latency.ArchLatency:
    keep_cfg, int8 -> measured latency as shipped): the final architecture's latency must fit too;
    the fractions recipe projects onto it by width scaling, the others are rejected when over it.
    ``project``: "down" scales the fractions recipe's widths only when over its cost target (budget x
    ``cost_target``); "both" also scales a configuration under its target up, towards full width.
    """
    if project not in ("down", "both"):
        raise ValueError(f"project must be 'down' or 'both', not {project!r}")
    if budget_ms is not None and latency is None:
        raise ValueError("a latency budget needs a latency function (m2mdc.arch_latency.ArchLatency)")
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    training = dict(training or {})
    pqd = {k: training.pop(k) for k in ("pqd_epochs", "split") if k in training}
    v = resolve(config, recipe)
    if recipe in PQD_ORDERS and "sparsity" not in config:
        v["sparsity"] = PQD_SPARSITY
    kd = {**training, **step_settings(v, "kd")}
    mi = {"bins": bins, "probe_samples": probe_samples}
    if recipe == "fractions":
        out = _fractions(v, target, budget_gmacs, kd, mi, budget_ms, latency, project)
    elif recipe == "allocator":
        out = _allocator(v, target, budget_gmacs, kd, mi)
    elif recipe in PQD_ORDERS:
        full = target.cost.keep_cfg(frozenset(target.cost.blocks), target.cost.full_knob_widths)
        plan = pqd_plan(recipe, v["sparsity"], pqd.get("pqd_epochs", PQD_EPOCHS), pqd.get("split", PQD_SPLIT),
                        **{k: x for k, x in kd.items() if k not in ("epochs",)})
        out = CompiledPlan(plan, full, target.cost.full_gmacs, target.cost.full_gmacs)
    else:
        out = _m2mdc(v, config.get("keep_blocks"), target, kd, mi, qat=recipe == "m2mdc+qat")
    if budget_ms is not None and out.feasible and out.latency is None:  # a recipe that fixes its widths
        t = latency(out.keep_cfg, any(s["step"] == "qat" for s in out.plan))
        out.latency = {"predicted_ms": t["ms"], "spread_pct": t["spread_pct"], "backend": t["backend"],
                       "sampled_ms": t["ms"]}
        if t["ms"] > budget_ms:
            out = CompiledPlan([], out.keep_cfg, out.gmacs, out.sampled_gmacs, 0.0, feasible=False,
                               notes=[f"{t['ms']:.2f} ms exceeds the {budget_ms:g} ms budget and the {recipe!r} "
                                      f"recipe fixes its widths"], latency=out.latency,
                               violation=t["ms"] / budget_ms - 1.0)
    if out.feasible:
        out.plan = validate_plan(out.plan + _added_steps(v, config), target.adapter.arch, target.cost.num_classes)
    return out


def _added_steps(values: dict, config: dict) -> list[dict]:
    """Steps that knobs add when set away from their default (``Knob.adds``), at the plan's end."""
    return [{"step": k.adds, **step_settings({name: config[name]}, k.adds)} for name, k in KNOBS.items()
            if k.adds and name in config and config[name] != k.default]


def kd_step(kd: dict) -> dict:
    return {"step": "kd", **kd}


def tail_steps(v: dict, kd: dict) -> list[dict]:
    """Unstructured sparsity and INT8 QAT (each followed by a KD repair) in ``tail_order``."""
    parts = {"s": [{"step": "sparsity", "target": float(v["sparsity"])}, kd_step(kd)] if v["sparsity"] > 0 else [],
             "q": [{"step": "qat"}, kd_step(kd)] if v["qat"] else []}
    return [s for c in v["tail_order"] for s in parts[c]]


def fraction_widths(cost: CostModel, planes: dict[str, float], mid: float, scale: float,
                    exact: bool = False) -> dict[str, int]:
    """Knob widths for planes fractions (per stage), one mid fraction, all scaled by ``scale`` (whole conv
    groups where a grouped conv reads the group); ``exact``: the unrounded widths, capped at full."""
    out = {}
    for knob, full in cost.full_knob_widths.items():
        kind, _, owner = knob.partition(":")
        frac = planes[owner] if kind == "planes" else mid
        out[knob] = min(full, frac * scale * full) if exact else keep_width(full, frac * scale, cost.quantum[knob])
    return out


def _fill(cost: CostModel, kept: frozenset, widths: dict[str, int], wanted: dict[str, float],
          limit: float) -> dict[str, int]:
    """Grow the widths one conv group at a time, the knob furthest below its wanted (unrounded) width first,
    while the cost fits ``limit``: one common scale, rounded per knob, can leave a few percent of a small
    target unspent; this spends it without changing the shape by more than a rounding step."""
    widths = dict(widths)
    active = [k for k in cost.knobs if cost.knob_block[k] is None or cost.knob_block[k] in kept]
    while True:
        for k in sorted(active, key=lambda k: (widths[k] - wanted[k]) / cost.full_knob_widths[k]):
            grown = widths[k] + cost.quantum[k]
            if grown <= cost.full_knob_widths[k] and cost.macs_of(kept, {**widths, k: grown}) <= limit:
                widths[k] = grown
                break
        else:
            return widths


def _planes_fractions(v: dict, cost: CostModel) -> dict[str, float]:
    p = v["planes_keep"]
    if isinstance(p, dict) and set(p) != set(cost.stage_blocks):
        raise UserError(f"planes_keep per stage must name every stage of this model, {', '.join(cost.stage_blocks)}; "
                        f"got {', '.join(map(str, p)) or 'none'} (or give one fraction for all)")
    return {s: float(p[s]) if isinstance(p, dict) else float(p) for s in cost.stage_blocks}


def global_widths(cost: CostModel, kept: frozenset, scores: dict, keep_frac: float) -> dict[str, int]:
    """Knob widths from one ranking of every channel of the kept blocks' groups by its group-L1
    importance divided by its group's mean (Torch-Pruning's GroupMagnitudeImportance with its mean
    normaliser, global_pruning=True): the top ``keep_frac`` of all channels stay, at least one conv
    group per knob. Known from the teacher alone, so the cost is still known before training."""
    active = [k for k in cost.knobs if cost.knob_block[k] is None or cost.knob_block[k] in kept]
    norm = {k: torch.as_tensor(scores[cost.knobs[k][0]]).double() for k in active}
    norm = {k: v / v.mean().clamp_min(1e-12) for k, v in norm.items()}
    flat = torch.cat(list(norm.values())).sort(descending=True).values
    n_keep = max(1, min(len(flat), round(keep_frac * len(flat))))
    threshold = flat[n_keep - 1]
    widths = dict(cost.full_knob_widths)
    for k, v in norm.items():
        q = cost.quantum[k]
        widths[k] = q * max(1, min(cost.full_knob_widths[k] // q, round(int((v >= threshold).sum()) / q)))
    return widths


def _largest_fitting(cost_at: Callable[[float], float], lo: float, hi: float, limit: float) -> float:
    """The largest scale in [lo, hi) whose cost fits ``limit``, by bisection (cost grows with the scale;
    ``lo`` fits, ``hi`` does not)."""
    for _ in range(BISECTION_STEPS):
        m = (lo + hi) / 2
        if cost_at(m) <= limit:
            lo = m
        else:
            hi = m
    return lo


def _fractions(v: dict, target: Target, budget_gmacs: float | None, kd: dict, mi: dict,
               budget_ms: float | None = None, latency=None, project: str = "down") -> CompiledPlan:
    adapter, teacher, cost = target.adapter, target.teacher, target.cost
    pruned = select_blocks_to_prune(target.scores(), adapter, teacher, float(v["prune_ratio"]))
    keep_blocks = keep_blocks_after(adapter, teacher, pruned)
    kept = frozenset(b for b in cost.blocks if b not in set(pruned))
    planes, mid = _planes_fractions(v, cost), float(v["mid_keep"])
    ranking = {**step_settings(v, "widths"), **mi}
    if v["ranking"] == "global":  # the fractions set the total kept; the teacher's importance decides where
        full = fraction_widths(cost, planes, mid, 1.0)
        active = [k for k in cost.knobs if cost.knob_block[k] is None or cost.knob_block[k] in kept]
        total = sum(full[k] for k in active) / sum(cost.full_knob_widths[k] for k in active)
        scores = target.channel_scores["group_l1"]

        def widths_at(scale):
            return global_widths(cost, kept, scores, total * scale)
        ranking["signal"] = "group_l1"  # the channels the ranking counted are the ones the slice keeps
    else:
        def widths_at(scale):
            return fraction_widths(cost, planes, mid, scale)
    sampled = cost.macs_of(kept, widths_at(1.0))
    budget_macs = budget_gmacs * 1e9 if budget_gmacs is not None else float("inf")
    target_macs = budget_macs * float(v["cost_target"])
    # the scale at which every width is full: past it nothing grows (fractions are shares of the teacher's widths)
    full_scale = 1.0 / max(1e-9, total if v["ranking"] == "global" else min(min(planes.values()), mid))
    scale, feasible = 1.0, True
    if sampled > target_macs:
        if cost.macs_of(kept, widths_at(0.0)) > target_macs:
            feasible = False
        else:
            scale = _largest_fitting(lambda s: cost.macs_of(kept, widths_at(s)), 0.0, 1.0, target_macs)
    elif project == "both" and sampled < target_macs < float("inf"):
        if cost.macs_of(kept, widths_at(full_scale)) <= target_macs:  # full width stays under the target:
            scale = full_scale  # recorded at the cost it reaches, never stretched past the teacher's widths
        else:
            scale = _largest_fitting(lambda s: cost.macs_of(kept, widths_at(s)), 1.0, full_scale, target_macs)
    lat = None
    if feasible and budget_ms is not None:
        int8 = bool(v["qat"])

        def ms_at(s: float) -> dict:
            return latency(cost.keep_cfg(kept, widths_at(s)), int8)
        fitted, lat = project_latency(ms_at, scale, budget_ms)
        if fitted is None:
            widths = widths_at(0.0)
            return CompiledPlan([], cost.keep_cfg(kept, widths), cost.macs_of(kept, widths) / 1e9, sampled / 1e9,
                                0.0, feasible=False, latency=lat, violation=lat["predicted_ms"] / budget_ms - 1.0,
                                notes=[f"{len(kept)} kept blocks{' in INT8' if int8 else ''} take "
                                       f"{lat['predicted_ms']:.2f} ms even at one channel per group, over the "
                                       f"{budget_ms:g} ms budget"])
        scale = fitted
    widths = widths_at(scale)
    if feasible and project == "both" and lat is None and v["ranking"] != "global":
        wanted = fraction_widths(cost, planes, mid, scale, exact=True)
        widths = _fill(cost, kept, widths, wanted, target_macs)
    keep_cfg = cost.keep_cfg(kept, widths)
    gmacs = cost.macs_of(kept, widths) / 1e9
    if not feasible:
        return CompiledPlan([], keep_cfg, gmacs, sampled / 1e9, 0.0, feasible=False,
                            violation=gmacs / (target_macs / 1e9) - 1.0, target_gmacs=target_macs / 1e9,
                            notes=[f"{len(kept)} kept blocks exceed the cost target {target_macs / 1e9:.4g} GMACs "
                                   f"even at one channel per group"])
    cut = {kind: any(widths[k] < cost.full_knob_widths[k] for k in widths if k.startswith(kind + ":"))
           for kind in ("planes", "mid")}
    edits = {
        "b": [{"step": "block_prune", "keep_blocks": keep_blocks, **mi}] if pruned else [],
        "p": [{"step": "widths", "keep_cfg": {"planes": keep_cfg["planes"]}, **ranking}] if cut["planes"] else [],
        "m": [{"step": "widths", "keep_cfg": {"mid": dict(keep_cfg["mid"])}, **ranking}] if cut["mid"] else [],
    }
    plan = scheduled([s for c in v["order"] for s in edits[c]], v, kd)
    return CompiledPlan(plan, keep_cfg, gmacs, sampled / 1e9, scale, latency=lat,
                        target_gmacs=target_macs / 1e9 if budget_gmacs is not None else None,
                        full_width=all(widths[k] == cost.full_knob_widths[k] for k in cost.knobs
                                       if cost.knob_block[k] is None or cost.knob_block[k] in kept))


LATENCY_BAND = 0.05  # the projection stops once the latency is within this share under the budget
LATENCY_STEPS = 6  # at most this many measurements between the two ends


def project_latency(ms_at: Callable[[float], dict], hi: float, budget_ms: float, band: float = LATENCY_BAND,
                    steps: int = LATENCY_STEPS) -> tuple[float | None, dict]:
    """(scale, latency record): the largest width scale in [0, ``hi``] whose measured latency fits
    ``budget_ms`` (None when even scale 0 does not), and the prediction for it.

    Each measurement costs a compile, so this is false position (regula falsi, Illinois variant)
    on latency against scale squared (MACs grow with the square of the width) rather than bisection: it aims just inside the budget and stops once a
    measurement lands within ``band`` under it, usually after 1-3 measurements between the ends.
    Latency grows with width up to timing noise; the scale kept is always one *measured* to fit.
    """
    top = ms_at(hi)
    record = {"sampled_ms": top["ms"]}
    if top["ms"] <= budget_ms:
        return hi, {**record, "predicted_ms": top["ms"], "spread_pct": top["spread_pct"],
                    "backend": top["backend"], "measurements": 1}
    bottom = ms_at(0.0)
    n = 2
    if bottom["ms"] > budget_ms:
        return None, {**record, "predicted_ms": bottom["ms"], "spread_pct": bottom["spread_pct"],
                      "backend": bottom["backend"], "measurements": n}
    lo, t_lo, best = 0.0, bottom["ms"], bottom
    t_hi = top["ms"]
    aim = budget_ms * (1 - band / 2)
    side = 0
    for _ in range(steps):
        if hi - lo < 1e-3 or best["ms"] >= budget_ms * (1 - band):
            break
        # interpolate in s^2: MACs (and so, past the per-call floor, time) grow with the square of the width scale
        u = lo ** 2 + (hi ** 2 - lo ** 2) * (aim - t_lo) / max(t_hi - t_lo, 1e-9)
        s = min(max(u, 0.0) ** 0.5, hi)
        s = min(max(s, lo + 0.02 * (hi - lo)), hi - 0.02 * (hi - lo))
        t = ms_at(s)
        n += 1
        if t["ms"] <= budget_ms:
            lo, t_lo, best = s, t["ms"], t
            if side == 1:  # Illinois: the other end stayed twice in a row, halve its weight
                t_hi = aim + (t_hi - aim) / 2
            side = 1
        else:
            hi, t_hi = s, t["ms"]
            if side == -1:
                t_lo = aim - (aim - t_lo) / 2
            side = -1
    return lo, {**record, "predicted_ms": best["ms"], "spread_pct": best["spread_pct"], "backend": best["backend"],
                "measurements": n}


def scheduled(edits: list[dict], v: dict, kd: dict) -> list[dict]:
    """The structural edits with their KD repairs as the schedule says, then the tail stages: progressive
    = a repair of T epochs after every edit (the paper's); one-shot = every edit, then one repair with
    all their epochs (Torch-Pruning's usual use). A plan with nothing to do still gets one repair, so
    every trial trains."""
    if v["schedule"] == "one-shot" and edits:
        plan = [*edits, kd_step({**kd, "epochs": len(edits) * kd.get("epochs", KD_EPOCHS)})]
    else:
        plan = [s for e in edits for s in (e, kd_step(kd))]
    plan += tail_steps(v, kd)
    return plan or [kd_step(kd)]


# What a user would otherwise run, as configurations of the fractions recipe (over a budget they are
# projected onto it like any configuration): the search's first trials, and the baselines' rows.
BASELINES = {
    "uniform width": {"prune_ratio": 0.0, "planes_keep": 1.0, "mid_keep": 1.0, "signal": "bn",
                      "schedule": "one-shot", "ranking": "stage"},
    "Torch-Pruning-like local": {"prune_ratio": 0.0, "planes_keep": 1.0, "mid_keep": 1.0, "signal": "group_l1",
                                 "schedule": "one-shot", "ranking": "stage"},
    "Torch-Pruning-like global": {"prune_ratio": 0.0, "planes_keep": 1.0, "mid_keep": 1.0, "signal": "group_l1",
                                  "schedule": "one-shot", "ranking": "global"},
    "M2M-DC at the budget": {"prune_ratio": 0.5, "planes_keep": 1.0, "mid_keep": 1.0, "order": "bpm", "signal": "bn",
                             "schedule": "progressive", "ranking": "stage"},
}


# With a latency budget, what a deployment engineer would also try: the same one-shot pruning shipped as
# INT8 (QAT; the latency projection then fits its width). At batch 64 an INT8 ResNet-18 runs ~3x faster
# than FP32, so under a latency budget it can keep far more channels.
LATENCY_BASELINES = {"Torch-Pruning-like local + INT8 QAT": {**BASELINES["Torch-Pruning-like local"], "qat": True}}


def compile_within(config: dict, target: Target, budget_gmacs: float, where: str) -> CompiledPlan:
    """``config``'s plan within the GMACs budget (widths projected onto it, as a trial's are), or one line
    saying why it cannot be: a user's own configuration (``where`` names it) checked before anything runs."""
    plan = compile_config(config, target, budget_gmacs=budget_gmacs)
    if not plan.feasible:
        raise UserError(f"{where}: cannot be brought within {budget_gmacs:g} GMACs "
                        f"({'; '.join(plan.notes) or 'infeasible'})")
    return plan


def _largest(p):
    """The largest value a space's knob (spaces.Param: fixed value, range or choices) can take."""
    return p.high if p.low is not None else max(p.choices) if p.choices is not None else p.fixed


# Not a baseline (no one-shot pruning library removes blocks): the search's own prior, seeded beside the
# baselines. At 32x32 the budget spent on fewer blocks at full width beat every width-pruned ResNet-18 in
# accuracy and batch-1 time (README: "one block per stage", benchmarks/depth_latency.py), and every
# kept weight is the teacher's own, unsliced.
SHALLOWEST = "fewest blocks at full width"


def shallowest_config(params: dict) -> dict | None:
    """The space's deepest block cut (its largest block-prune ratio) at full width, ranked and repaired as
    the Torch-Pruning-like baseline (widths over a budget are projected onto it like any configuration's);
    None when the space removes no blocks. ``params``: knob name -> spaces.Param."""
    ratio = _largest(params["prune_ratio"])
    return {**BASELINES["Torch-Pruning-like local"], "prune_ratio": ratio} if ratio > 0 else None


def fastest_configs(params: dict) -> list[dict]:
    """The fractions configurations with the fewest blocks and narrowest widths a space can build: its
    largest block-prune ratio, every width at one channel per group, one per INT8 choice (a space that
    samples QAT may ship either format, and at tiny widths INT8's quantise/dequantise overhead can make
    it the slower one). ``params``: knob name -> spaces.Param (fixed value, range or choices)."""
    qat = params["qat"]
    int8s = sorted({bool(c) for c in (qat.choices if qat.choices is not None else (qat.fixed,))})
    return [thinnest({"prune_ratio": _largest(params["prune_ratio"]), "qat": q}) for q in int8s]


def depth_ladder(target: Target) -> list[dict]:
    """Fractions configurations removing k = 0, 1, ... free blocks (up to all of them; the block-prune step
    stops where a stage would empty), at full width with the Torch-Pruning-like ranking and schedule, so a
    budget's projection gives each depth its widest widths. The step removes floor(ratio x |free|) blocks,
    so the ratio (k + 0.5) / |free| removes exactly k."""
    adapter, teacher = target.adapter, target.teacher
    free = [b for b in adapter.blocks(teacher) if not adapter.is_protected(teacher, b)]
    return [{**BASELINES["Torch-Pruning-like local"], "prune_ratio": min((k + 0.5) / len(free), 0.999) if k else 0.0}
            for k in range(len(free) + 1)]


def design_point(config: dict, prune_ratio: float, cost_target: float) -> dict:
    """``config`` with its block-prune ratio and cost target set: the two axes a design over depth and cost
    stratifies (analysis/proxy_depth.py)."""
    return {**config, "prune_ratio": float(prune_ratio), "cost_target": float(cost_target)}


def thinnest(config: dict) -> dict:
    """``config`` with every width at one channel per group: the floor of its depth."""
    return {**config, "planes_keep": 1e-6, "mid_keep": 1e-6}


def channel_signals(recipe: str, values: dict[str, tuple]) -> set[str]:
    """The channel-score signals a search's trials may need from the teacher (``values``: the values
    each knob can take): the allocator values widths by the sampled signal, global ranking by group-L1."""
    needed = set()
    if recipe == "allocator":
        needed |= set(values.get(knob_for("widths.signal"), ()))
    if "global" in values.get("ranking", ()):
        needed.add("group_l1")
    return needed


def cohort(config: dict) -> str:
    """Which trials an early-stopping rung may compare: a one-shot trial reports after all its edits,
    a progressive one after its first, so each is compared with trials of its own schedule."""
    return str(config.get("schedule", KNOBS["schedule"].default))


def _allocator(v: dict, target: Target, budget_gmacs: float | None, kd: dict, mi: dict) -> CompiledPlan:
    if budget_gmacs is None:
        raise UserError("the allocator recipe needs a GMACs budget to spend")
    cost, signal = target.cost, v["signal"]
    if signal not in target.channel_scores:
        raise ValueError(f"no channel scores for signal {signal!r}; compute them for every signal the space samples")
    result = allocate(target.adapter, target.teacher, budget_gmacs, cost.num_classes, cost.resolution,
                      target.scores(), target.channel_scores[signal], depth_share=float(v["depth_share"]),
                      min_keep=float(v["min_keep"]), cost=cost)
    edits = [s for s in allocation_plan(result, signal, kd, mi) if s["step"] != "kd"]
    plan = scheduled(edits, v, kd)
    return CompiledPlan(plan, result["keep_cfg"], result["gmacs"], result["gmacs"], details=result)


def _m2mdc(v: dict, keep_blocks: dict | None, target: Target, kd: dict, mi: dict, qat: bool) -> CompiledPlan:
    """The paper's plan, priced before training: blocks from the MI ranking (or ``keep_blocks``),
    widths from the fractions exactly as the planes / mid steps compute them."""
    adapter, teacher, cost = target.adapter, target.teacher, target.cost
    if keep_blocks is not None:
        cfg = adapter.validate_keep_cfg({"blocks": keep_blocks}, cost.num_classes)
        kept = frozenset(adapter.block_name(s, i) for s, idx in cfg["blocks"].items() for i in idx) | frozenset(
            b for b in cost.blocks if adapter.stage_of(b) not in cfg["blocks"])
    else:
        ratio = float(v["prune_ratio"])
        kept = frozenset(cost.blocks) - set(select_blocks_to_prune(target.scores(), adapter, teacher, ratio)
                                            if ratio else [])
    widths = fraction_widths(cost, _planes_fractions(v, cost), float(v["mid_keep"]), 1.0)
    keep_cfg = cost.keep_cfg(kept, widths)
    signal = step_settings(v, "planes").get("signal", "bn")
    plan = m2mdc_plan(None if keep_blocks is not None else v["prune_ratio"], v["planes_keep"], v["mid_keep"],
                      keep_blocks, signal, **kd)
    for s in plan:
        if s["step"] in ("block_prune", "planes", "mid"):
            s.update(mi)
    if qat:
        plan += [{"step": "qat"}, kd_step(kd)]
    gmacs = cost.macs_of(kept, widths) / 1e9
    return CompiledPlan(plan, keep_cfg, gmacs, gmacs)


def max_reports(target: Target, recipe: str, budget_gmacs: float | None, training: dict) -> int:
    """An upper bound of the progress reports a trial of ``recipe`` emits (ASHA's max_t): the plan of a
    configuration with every optional stage on (all three edits, sparsity, QAT), plus the final report."""
    widest = {"prune_ratio": 0.5, "planes_keep": 0.5, "mid_keep": 0.5, "depth_share": 0.5, "sparsity": 0.5,
              "qat": True}
    plan = compile_config(widest, target, recipe=recipe, training=training,
                          budget_gmacs=budget_gmacs if recipe == "allocator" else None).plan
    return plan_reports(plan) + 1
