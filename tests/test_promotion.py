"""Promotion inside the search (search/promotion.py): cost bands, the promotion rule, the front read at the
highest fidelity, and a search killed around its promotion that resumes to a complete, consistent record,
with every trial's origin (seeded baseline, prior, sampled) kept through the kills."""
from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from search.mlflow_store import open_client
from search.outcome import COMPLETED, STOPPED_EARLY
from search.promotion import PROMOTED_FROM, PROMOTIONS, band_edges, band_of, choose, highest_fidelity

from .crash import REPO, SEEDED, Search, resume_until_done


def test_three_bands_centre_on_the_readme_costs():
    edges = band_edges(0.02, 3)
    assert edges[0] == 0.0 and edges[-1] == 0.02 and edges == sorted(edges)
    assert [band_of(g, edges) for g in (0.006, 0.0111, 0.02)] == [0, 1, 2]
    assert band_of(0.0001, edges) == 0 and band_of(0.03, edges) == 2  # outside: the nearest end band
    assert band_edges(0.02, 1) == [0.0, 0.02]


def _row(tid, val, gmacs, status=COMPLETED, **config):
    return {"trial_id": tid, "status": status, "val_top1": val, "gmacs": gmacs, "config": config}


def test_each_band_promotes_its_best_and_its_best_sampled_one():
    rows = [_row("s1", 60.0, 0.019), _row("a", 58.0, 0.0195), _row("b", 57.0, 0.018),
            _row("c", 50.0, 0.006), _row("d", 70.0, 0.0065, status=STOPPED_EARLY), _row("e", 40.0, 0.011)]
    origins = {"s1": "seeded baseline: uniform width", "a": "sampled (tpe #4)", "b": "sampled (tpe #5)",
               "c": "prior: fewest blocks at full width", "d": "sampled (tpe #6)", "e": "sampled (tpe #7)"}
    chosen = choose(rows, 0.02, 1, 3, origins)
    # band 2: the seed is best, so the best sampled one (a) goes too; band 0: the prior alone (d was stopped);
    # band 1: e
    assert [(c["source"], c["band"]) for c in chosen] == [("c", 0), ("e", 1), ("s1", 2), ("a", 2)]
    assert all(c["trial_id"] == c["source"] + "-long" and c["config"]["fidelity"] == "long"
               and c["config"][PROMOTED_FROM] == c["source"] for c in chosen)
    assert choose(rows, 0.02, 0, 3, origins) == []


def test_promotion_by_adaptive_bn_ranks_by_the_untrained_val_and_keeps_rows_without_it():
    rows = [_row("a", 60.0, 0.019), _row("b", 55.0, 0.0185), _row("c", 59.0, 0.018)]
    rows[0]["val_top1_adaptive_bn"], rows[1]["val_top1_adaptive_bn"] = 30.0, 45.0  # c has none: ranked last
    origins = {t: f"sampled (tpe #{i})" for i, t in enumerate("abc")}
    by = [choose(rows, 0.02, k, 1, origins, rank_by="val_top1_adaptive_bn") for k in (1, 3)]
    assert [c["source"] for c in by[0]] == ["b"] and [c["source"] for c in by[1]] == ["b", "a", "c"]
    assert by[0][0]["ranked_by"] == "val_top1_adaptive_bn" and by[0][0]["ranked_value"] == 45.0
    assert [c["source"] for c in choose(rows, 0.02, 1, 1, origins)] == ["a"]  # by the short val


def test_the_front_reads_each_configuration_at_its_highest_fidelity():
    rows = [_row("a", 60.0, 0.02), _row("b", 55.0, 0.01), _row("a-long", 66.0, 0.02, promoted_from="a"),
            _row("b-long", 0.0, 0.01, status="failed", promoted_from="b")]
    assert [r["trial_id"] for r in highest_fidelity(rows)] == ["a-long", "b"]  # b's promotion failed: b stands


@pytest.fixture(scope="module")
def out(search_out):
    return search_out()


def test_a_search_killed_around_its_promotion_resumes_with_every_record_once(out):
    search = Search(out, "promoted", num_samples=7, seed_baselines=True, bands=3, space=SEEDED)
    assert search.run(fault="searcher.asked@2") == -9  # the second trial, a seeded one, asked and not named
    assert search.run(resume=True, fault="promotion") == -9, search.log()[-3000:]
    assert search.audit_partial() == []
    listed = json.loads((search.exp_dir / PROMOTIONS).read_text())["promotions"]
    assert listed and not (search.exp_dir / "promotion").exists()  # killed before any promoted trial started
    # the resume replays the searched trials untrained, so its first training epoch is a promoted trial's
    assert search.run(resume=True, fault="trial.epoch") == -9, search.log()[-3000:]
    assert search.hits() == ["searcher.asked", "promotion", "trial.epoch"]
    assert search.audit_partial() == []
    assert resume_until_done(search) == [0], search.log()[-3000:]
    assert search.audit() == []  # one run per trial, promoted ones included; pareto tags = recount at top fidelity
    assert json.loads((search.exp_dir / PROMOTIONS).read_text())["promotions"] == listed  # never chosen again

    client = open_client(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(search.name)
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([exp.experiment_id], "tags.role = 'trial'")}
    promoted = {tid: r for tid, r in runs.items() if PROMOTED_FROM in r.data.tags}
    assert set(promoted) == {p["trial_id"] for p in listed}
    assert all(r.data.tags["fidelity"] == "long" and r.data.tags["status"] == COMPLETED for r in promoted.values())
    assert all(r.data.tags["fidelity"] == "short" for tid, r in runs.items() if tid not in promoted)
    for tid, r in promoted.items():  # the same architecture, trained for longer
        source = runs[r.data.tags[PROMOTED_FROM]]
        assert r.data.tags["keep_cfg"] == source.data.tags["keep_cfg"]
        assert r.data.metrics["epochs_done"] > source.data.metrics["epochs_done"]
    tagged = {tid for tid, r in runs.items() if r.data.tags.get("pareto") == "true"}
    assert tagged and not any(r.data.tags[PROMOTED_FROM] in tagged for r in promoted.values())  # source replaced

    study = optuna.load_study(study_name=search.name, storage=f"sqlite:///{search.exp_dir / 'optuna.db'}")
    origin = {t.user_attrs["ray_trial_id"]: t.user_attrs["origin"] for t in study.trials}
    seeded = [t for t in study.trials if "fixed_params" in t.system_attrs]
    assert [origin[t.user_attrs["ray_trial_id"]] for t in seeded] == [  # all but global ranking, not in the space
        "seeded baseline: uniform width", "seeded baseline: Torch-Pruning-like local",
        "seeded baseline: M2M-DC at the budget", "prior: fewest blocks at full width"]
    assert all(origin[t.user_attrs["ray_trial_id"]] == f"sampled (random #{t.number})" for t in study.trials
               if t not in seeded)
    for tid, r in runs.items():  # MLflow says the same; a promoted run carries its source's origin
        assert r.data.tags["origin"] == origin[r.data.tags.get(PROMOTED_FROM, tid)]
    # the review reads the front from MLflow at the highest fidelity too: its members are the tagged ones
    review = subprocess.run([sys.executable, "analysis/review.py", "--experiment", search.name, "--out-dir", str(out),
                             "--no-log"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert review.returncode == 0, review.stderr[-3000:]
    assert "warning" not in review.stdout and all(tid in review.stdout for tid in tagged)


def test_asha_compares_trials_only_within_their_cost_band():
    """A cheap trial's val trails a dear one's by construction: ASHA's cohorts split by cost band, or it
    would stop the cheap trials a frontier search samples on purpose (and leave their bands nothing to
    promote)."""
    from functools import partial

    from m2mdc.trial_budget import cohort
    from search.promotion import band_of_share

    by_band = partial(cohort, band_of_share=partial(band_of_share, bands=3))
    assert by_band({"cost_target": 1.0}) == by_band({}) == by_band({"cost_target": 0.8})
    assert by_band({"cost_target": 0.3}) == by_band({"cost_target": 0.35}) != by_band({"cost_target": 1.0})
    assert by_band({"cost_target": 0.56}) not in (by_band({"cost_target": 0.3}), by_band({"cost_target": 1.0}))
    assert by_band({"schedule": "progressive"}) != by_band({"schedule": "one-shot"})
