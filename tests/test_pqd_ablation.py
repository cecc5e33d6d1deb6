"""analysis/pqd_ablation.py on digits: orders at equal epochs actually trained as their order, one table.

Three orders are trained end to end (each stage once in each position: P->Q->D, Q->D->P, D->P->Q; an
INT8 convert costs ~25 s, so all six would add over two minutes of CI for the same code path); the
plans of all six are checked without training."""
import json

import pytest

from analysis import pqd_ablation, study
from m2mdc.compiler import compile_config, dry_target
from m2mdc.presets import PQD_ORDERS
from tests.shrunk import SHORT_STEPS, short_budget

TRAINED = ("pqd", "qdp", "dpq")  # every stage once first, once second, once last


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, search_out):
    out, results = search_out(), tmp_path_factory.mktemp("pqd-results")  # the run's digits teacher cached in out
    mp = pytest.MonkeyPatch()
    mp.setenv("M2MDC_RESULTS_DIR", str(results))
    # the short budget's 8 epochs, of SHORT_STEPS batches instead of 40 (CI time): equal epochs is what is tested
    mp.setitem(study.BUDGETS, "short", short_budget())
    try:
        assert pqd_ablation.main(["--dataset", "digits", "--epochs", "5", "--seeds", "0", "--no-long",
                                  "--orders", ",".join(TRAINED), "--out-dir", str(out)]) == 0
    finally:
        mp.undo()
    return out, results


@pytest.mark.parametrize("order", PQD_ORDERS)
def test_every_order_compiles_to_its_stages_in_its_order_with_equal_epochs(order):
    plan = compile_config({}, dry_target("resnet18", 10, 32), recipe=order, training={"pqd_epochs": 10}).plan
    stages = [{"sparsity": "p", "qat": "q", "kd": "d"}[s["step"]] for s in plan if s["step"] in ("sparsity", "qat", "kd")]
    assert "".join(stages) == order
    epochs = [s.get("epochs", 0) for s in plan]
    assert sum(epochs) == sum(s.get("epochs", 0) for s in compile_config(
        {}, dry_target("resnet18", 10, 32), recipe="pqd", training={"pqd_epochs": 10}).plan)


def test_orders_each_trained_as_its_order_for_equal_epochs(ablation):
    out, results = ablation
    data = json.loads((out / "pqd_ablation" / "resnet18-digits" / "pqd_ablation.json").read_text())
    short = data["short"]
    assert sorted(r["recipe"] for r in short) == sorted(TRAINED)
    for r in short:  # the plan each order ran, read back from what it trained: its stages in its order
        stages = [{"sparsity": "p", "qat": "q", "kd": "d"}[s] for s in r["steps"] if s in ("sparsity", "qat", "kd")]
        assert "".join(stages) == r["recipe"], r["steps"]
        assert r["seeds"] == [0] and r["int8"] is True
    assert len({r["epochs_trained"] for r in short}) == 1 and short[0]["epochs_trained"] == 8
    saved = [json.loads(p.read_text()) for p in (results / "pqd_ablation" / "resnet18-digits").glob("*.json")]
    assert {s["kd_settings"]["steps_per_epoch"] for s in saved} == {SHORT_STEPS}
    assert {s["epochs_trained"] for s in saved} == {8}
    assert len(list((results / "pqd_ablation" / "resnet18-digits").glob("*.json"))) == len(TRAINED)
    md = (out / "pqd_ablation" / "resnet18-digits" / "pqd_ablation.md").read_text()
    assert "Short-budget verdict" in md
    total = sum(s["minutes"] for s in saved)  # the wall time the table states is what the runs recorded
    assert f"Wall time: short budget {len(TRAINED)} runs, {total:.0f} min in all" in md
    assert md.count("| P -> ") + md.count("| Q -> ") + md.count("| D -> ") == len(TRAINED)
    assert data["deploy"]["size_bytes"] and data["deploy"]["backend"] in ("inductor", "eager-fallback")


def test_verdict_needs_a_margin_over_twice_the_seed_spread():
    rows = [{"label": "A", "test_mean": 50.0, "test_std": 0.5, "seeds": [0, 1, 2]},
            {"label": "B", "test_mean": 49.5, "test_std": 0.4, "seeds": [0, 1, 2]}]
    assert pqd_ablation.verdict(rows).startswith("no winner")
    rows[0]["test_mean"] = 52.0
    assert pqd_ablation.verdict(rows).startswith("A wins")
    assert "no winner declared" in pqd_ablation.verdict([{**r, "seeds": [0]} for r in rows])


def test_fresh_clone_times_the_artefact_by_retraining_its_model_without_changing_results(ablation, tmp_path):
    """results/ is committed, outputs/ is not: with the models gone the table still gets its INT8 line."""
    import shutil

    out, results = ablation
    folder = results / "pqd_ablation" / "resnet18-digits"
    before = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    fresh = tmp_path / "fresh-out"
    mp = pytest.MonkeyPatch()
    mp.setenv("M2MDC_RESULTS_DIR", str(results))
    mp.setitem(study.BUDGETS, "short", short_budget())
    try:
        shutil.copytree(out / "teachers", fresh / "teachers")  # the same teacher: results keyed by its hash
        assert pqd_ablation.main(["--dataset", "digits", "--epochs", "5", "--seeds", "0", "--no-long",
                                  "--orders", ",".join(TRAINED), "--out-dir", str(fresh)]) == 0
    finally:
        mp.undo()
    assert {p.name: p.read_bytes() for p in folder.glob("*.json")} == before  # reused, not re-run
    data = json.loads((fresh / "pqd_ablation" / "resnet18-digits" / "pqd_ablation.json").read_text())
    assert data["deploy"]["size_bytes"] and "re-trained on this machine to time it" in data["deploy"]["of"]
    assert [r["test_mean"] for r in data["short"]] == [r["test_mean"] for r in json.loads(
        (out / "pqd_ablation" / "resnet18-digits" / "pqd_ablation.json").read_text())["short"]]
    models = list((fresh / "pqd_ablation" / "resnet18-digits" / "models").iterdir())
    assert [m.name.startswith("short-seed0-") for m in models] == [True]  # only the timed model was re-trained
