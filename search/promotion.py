"""Promotion inside the search: the best configurations of each cost band trained again at the long budget.

A search trial is measured at two fidelities (m2mdc.fidelity): adaptive BN (no training, recorded as
``val_top1_adaptive_bn``) and the short repair its val top-1 is ranked by. Cheap fidelities rank
architectures of one cost far better than they compare an architecture with a cheaper one, so the
promotion rule works per cost band: the sampled costs are cut into bands of equal width on a log
scale (by default three, centred on 0.3, 0.56 and 1.0 of the budget: the README's 0.006 / 0.0111 /
0.02 GMACs at 0.02), and in each band the ``k`` best completed trials are trained again at the long
budget, plus the band's best *sampled* one if none of the k is (a seeded point must not
take a band's only place: the search's own finds are what it is judged by).

Promoted trials run in a second Ray Tune experiment of the same search (``OUT/search/NAME/promotion``),
FIFO, each under a fixed trial id ``<source id>-long`` with the source's knobs plus ``fidelity: long``
and ``promoted_from`` (a trial config's bookkeeping fields, not knobs), so a resumed search re-creates
them under their own ids and replays the ones that ended (search/trainable.py). The promotion list is
written to ``promotions.json`` before the first promoted trial starts, and a resume reads it rather
than choosing again. The front is then read at the highest fidelity each member reached.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from m2mdc.fidelity import LONG, SHORT
from m2mdc.io import write_json

from . import faults
from .optuna_search import under_id
from .outcome import COMPLETED

PROMOTIONS = "promotions.json"  # in the search's folder: the promoted trials, in order
FIDELITY = "fidelity"  # a trial config's field naming its fidelity (absent: short)
PROMOTED_FROM = "promoted_from"  # a promoted trial config's field: the trial it retrains
BOOKKEEPING = (FIDELITY, PROMOTED_FROM)  # config fields that are not knobs
LOWEST_SHARE = 0.3  # the cheapest cost target a search space samples, as a share of the budget
PROMOTE_BY = {"adaptive_bn": "val_top1_adaptive_bn", "short": "val_top1"}  # --promote-by -> the row's metric


def fidelity_of(config: dict) -> str:
    return config.get(FIDELITY, SHORT.name)


def knobs_of(config: dict) -> dict:
    """A trial config without its bookkeeping fields: what the compiler and the study see."""
    return {k: v for k, v in config.items() if k not in BOOKKEEPING}


def band_edges(budget: float, bands: int, lowest: float = LOWEST_SHARE) -> list[float]:
    """Edges (GMACs) of ``bands`` cost bands, equal in log-width, whose centres run from ``lowest`` x budget
    to the budget; the first band is open below, the last closed at the budget."""
    if bands == 1:
        return [0.0, budget]
    step = math.log(1 / lowest) / (bands - 1)  # centres lowest * e^(i*step), i = 0 .. bands-1
    inner = [budget * lowest * math.exp((i + 0.5) * step) for i in range(bands - 1)]
    return [0.0, *inner, budget]


def band_of_share(share: float, bands: int) -> int:
    """The cost band of a cost target given as a share of the budget (what ASHA's cohorts split by)."""
    return band_of(share, band_edges(1.0, bands))


def band_of(gmacs: float, edges: list[float]) -> int:
    for i in range(len(edges) - 1):
        if gmacs <= edges[i + 1]:
            return i
    return len(edges) - 2


def choose(rows: list[dict], budget: float, k: int, bands: int, origins: dict[str, str],
           rank_by: str = "val_top1") -> list[dict]:
    """The promotions: per cost band, the ``k`` completed short-fidelity rows with the highest ``rank_by``
    (a PROMOTE_BY metric), and the band's best sampled row if none of them is sampled. A row without that
    metric is ranked last, never dropped. ``origins``: trial id -> origin label."""
    if k <= 0:
        return []
    edges = band_edges(budget, bands)
    done = [r for r in rows if r["status"] == COMPLETED and fidelity_of(r["config"]) == SHORT.name
            and r.get("val_top1") is not None and r.get("gmacs") is not None]

    def rank(r):
        v = r.get(rank_by)
        return (v is None, -(v or 0.0), -r["val_top1"], r["gmacs"], r["trial_id"])

    chosen = []
    for b in range(bands):
        inside = sorted((r for r in done if band_of(r["gmacs"], edges) == b), key=rank)
        picks = inside[:k]
        if picks and not any(is_sampled(origins.get(r["trial_id"], "")) for r in picks):
            picks += [r for r in inside[k:] if is_sampled(origins.get(r["trial_id"], ""))][:1]
        chosen += [{"trial_id": f"{r['trial_id']}-{LONG.name}", "source": r["trial_id"], "band": b,
                    "band_gmacs": [edges[b], edges[b + 1]], "short_val_top1": r["val_top1"],
                    "ranked_by": rank_by, "ranked_value": r.get(rank_by),
                    "config": {**knobs_of(r["config"]), FIDELITY: LONG.name, PROMOTED_FROM: r["trial_id"]}}
                   for r in picks]
    return chosen


def is_sampled(origin: str) -> bool:
    return origin.startswith("sampled")


def promotions(exp_dir: Path, rows: list[dict], budget: float, k: int, bands: int, origins: dict[str, str],
               rank_by: str = "val_top1") -> list:
    """The search's promotion list: the one it wrote before (a resume never chooses again), else chosen
    now and written before any promoted trial starts."""
    path = Path(exp_dir) / PROMOTIONS
    if path.exists():
        return json.loads(path.read_text())["promotions"]
    chosen = choose(rows, budget, k, bands, origins, rank_by)
    write_json(path, {"fidelity": LONG.name, "per_band": k, "bands": bands, "ranked_by": rank_by,
                      "promotions": chosen})
    faults.point("promotion", path)
    return chosen


class PromotionSearcher(Searcher):
    """Hands Ray Tune the promoted configurations in order, then says it is finished."""

    def __init__(self, chosen: list[dict]):
        super().__init__()
        self.chosen = list(chosen)
        self.given = 0

    def next_trial_id(self) -> str | None:
        return self.chosen[self.given]["trial_id"] if self.given < len(self.chosen) else None

    def suggest(self, trial_id: str):
        if self.given >= len(self.chosen):
            return Searcher.FINISHED
        config = self.chosen[self.given]["config"]
        self.given += 1
        return dict(config)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass


class PromotionGenerator(SearchGenerator):
    """Ray's search generator, creating each promoted trial under its fixed id (``<source>-long``)."""

    def __init__(self, searcher: PromotionSearcher, max_concurrent: int):
        self.promotion_searcher = searcher
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))

    def create_trial_if_possible(self, experiment_spec):
        return under_id(self.promotion_searcher.next_trial_id(), lambda: super(PromotionGenerator, self)
                        .create_trial_if_possible(experiment_spec))


def source_of(row: dict) -> str | None:
    """The trial a row's promoted trial retrains (None: a searched trial): from its reported
    ``promoted_from`` (MLflow tag) or its config."""
    return row.get(PROMOTED_FROM) or (row.get("config") or {}).get(PROMOTED_FROM)


def highest_fidelity(rows: list[dict]) -> list[dict]:
    """Each configuration once, at the highest fidelity it completed: a promoted trial's completed row
    replaces its source's; a promotion that did not complete leaves the source's row standing. Rows are
    a search's report rows or analysis/review.py's MLflow rows."""
    promoted = {source_of(r): r for r in rows if r["status"] == COMPLETED and source_of(r)}
    return [promoted.get(r["trial_id"], r) for r in rows if not source_of(r)]
