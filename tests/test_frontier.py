"""End-to-end frontier searches on the embedded digits data: real Ray Tune, Optuna (SQLite) and MLflow
(SQLite). The acceptance command (the default space, QAT included, ASHA on), its review, ASHA across an
interrupt, the latency objective, and what the CLI refuses. Helpers: tests/searches.py.
"""
import json
import subprocess
import sys

import pytest

from search.pareto import non_dominated
from tests.searches import BUDGET, LEAN, REPO, check_search, frontier, interrupt_after_one_trial, mlflow_runs, refused

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(search_out):
    return search_out()


def test_smoke_search_end_to_end(out):
    """The acceptance command: default ResNet-18 space (QAT and sparsity included), ASHA on."""
    # an eager ASHA (stop below the 90th percentile from the first recorded trial on) so that some
    # trials are stopped early and the test can check they stay out of the Pareto set
    # (sampled trials only: seeded baselines are never stopped; they have their own test)
    r = frontier(out, "--name", "smoke", "--stop-fraction", "0.9", "--asha-min-trials", "1", "--no-seed-baselines")
    assert "Pareto set" in r.stdout
    _, by_status = check_search(out, "smoke", 4)
    assert "stopped_early" in by_status.values()
    # the console: a start and an end line per trial (config, cost, val, fidelity, seconds) and a progress
    # bar; Ray's status table only with --verbose
    for n in range(1, 5):
        assert f"[trial {n}/4 start] " in r.stderr
    ends = [ln for ln in r.stderr.splitlines() if "/4 done]" in ln or "/4 stopped early]" in ln]
    assert len(ends) == 4 and all("GMACs" in ln and "fidelity short" in ln and ln.endswith(" s") for ln in ends)
    assert "trials: 100%" in r.stderr and "Trial status" not in r.stdout + r.stderr


def test_existing_search_needs_resume_or_a_new_name(out, capfd):
    from search.frontier import main

    err = refused(main, ["--budget-gmacs", str(BUDGET), "--profile", "smoke", "--dataset", "digits", "--out-dir",
                         str(out), "--name", "smoke"], capfd)
    assert "already exists" in err


def test_review_reads_the_search_back_from_mlflow(out):
    """analysis/review.py: Pareto table = independent non-dominated set over the MLflow runs; PNGs; HV monotone."""
    from analysis import review

    client, _, children = mlflow_runs(out, "smoke")
    search = review.load_search(client, "smoke")
    _, front = review.pareto_table(search)
    done = [{"id": c.data.tags["trial_id"], **c.data.metrics} for c in children
            if c.data.tags["status"] == "completed"]
    independent = {d["id"] for d in done if not any(
        e["val_top1"] >= d["val_top1"] and e["gmacs"] <= d["gmacs"] and
        (e["val_top1"] > d["val_top1"] or e["gmacs"] < d["gmacs"]) for e in done)}
    assert {t["trial_id"] for t in front} == independent
    curve = review.hypervolume_curve(search)
    assert len(curve) == len(children) and all(b >= a for a, b in zip(curve, curve[1:])) and curve[-1] > 0
    r = subprocess.run([sys.executable, "analysis/review.py", "--experiment", "smoke", "--out-dir", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for png in ("frontier.png", "hypervolume.png"):
        assert (out / "review" / "smoke" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parent = [p for p in mlflow_runs(out, "smoke")[1]][0]
    assert {"review/frontier.png", "review/hypervolume.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "review")}
    bad = subprocess.run([sys.executable, "analysis/review.py", "--experiment", "nope", "--out-dir", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no MLflow experiment named 'nope'" in bad.stderr


# A wide configuration, then three that train identically (KD T=1: epoch 1 is pure CE, so beta does not
# act) at 5% of every width, near chance at the first rung whatever the teacher: an uninterrupted search
# with the eager cut stops all three; a resumed one that forgot the first trial's rung value would let
# one of them run on.
ASHA_POINTS = [
    {"prune_ratio": 0.0, "planes_keep": {s: w for s in ("layer1", "layer2", "layer3", "layer4")}, "mid_keep": w,
     "order": "bpm", "signal": "bn", "alpha": 0.1, "beta": b, "kd_lr": 1e-4, "sparsity": 0.0}
    for w, b in [(1.0, 0.1), (0.05, 0.1), (0.05, 0.2), (0.05, 0.3)]]


def test_resume_stops_the_same_trials_as_an_uninterrupted_search(out, tmp_path):
    """Ray does not restore a scheduler on resume (ray#30838); the persisted rungs must make an
    interrupted + resumed search stop exactly the trials an uninterrupted one stops."""
    points = tmp_path / "points.json"
    points.write_text(json.dumps(ASHA_POINTS))
    args = ["--space", str(LEAN), "--no-seed-baselines", "--points", str(points), "--num-samples", "4", "--stop-fraction", "0.9",
            "--asha-min-trials", "1", "--cpus-per-trial", "1",
            "--projection", "down"]  # the crippled widths stay crippled (projected up, they would reach the budget)
    frontier(out, *args, "--name", "asha-whole")
    cmd = [sys.executable, "search/frontier.py", "--budget-gmacs", str(BUDGET), "--profile", "smoke", "--dataset",
           "digits", "--out-dir", str(out), *args, "--name", "asha-resumed"]
    interrupt_after_one_trial(cmd, out, "asha-resumed")
    frontier(out, *args, "--name", "asha-resumed", "--resume")

    def statuses(name):
        children, by_status = check_search(out, name, 4)
        return {(c.data.params["planes_keep/layer1"], c.data.params["beta"]): by_status[c.data.tags["trial_id"]]
                for c in children}

    whole, resumed = statuses("asha-whole"), statuses("asha-resumed")
    assert "stopped_early" in whole.values(), whole  # the scenario exercises the cut
    assert resumed == whole


@pytest.mark.parametrize("args, words", [
    (["--budget-gmacs", "0"], "--budget-gmacs=0.0 is outside (0.0, inf)"),
    (["--budget-gmacs", "0.00001"], "below the smallest resnet18 this can build (0.00004009 GMACs)"),
    (["--sampler", "grid"], "invalid choice: 'grid'"),
    (["--address", "127.0.0.1:9"], "Ray cluster 127.0.0.1:9 is unreachable"),
    (["--mlflow-uri", "http://127.0.0.1:9"], "MLflow tracking server http://127.0.0.1:9 is unreachable"),
    (["--resume", "--name", "never-ran"], "nothing to resume"),
    (["--points", "/nonexistent.json"], "--points /nonexistent.json is not a readable JSON file"),
    (["--budget-ms", "0"], "--budget-ms=0.0 is outside (0.0, inf)"),
    (["--budget-ms", "1", "--objectives", "acc-gmacs"], "--budget-ms needs latency among the objectives"),
    (["--budget-ms", "1", "--latency-threads", "2", "--cpus-per-trial", "1"], "--latency-threads=2 is outside"),
    # measured: the smallest architecture the space builds, compiled as shipped (~10 s)
    (["--budget-ms", "0.0001", "--cpus-per-trial", "1"], "is below the fastest configuration the space can build"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, words, capfd):
    from search.frontier import main

    out = tmp_path / "out"
    err = refused(main, ["--budget-gmacs", str(BUDGET), "--profile", "smoke", "--dataset", "digits", "--out-dir",
                         str(out), "--space", str(LEAN), *args], capfd)
    assert words in err, err[-2000:]
    assert len(err.strip().splitlines()) == 1 if "invalid choice" not in words else True
    assert not (out / "mlflow.db").exists() and not (out / "search").exists()


def test_resume_of_a_latency_search_on_another_cpu_refuses(tmp_path, capfd):
    """Latencies measured on one CPU model say nothing about another: --resume there is refused unless
    --remeasure is given (checked before anything is measured or written)."""
    from search.frontier import main

    out = tmp_path / "out"
    folder = out / "search" / "other-cpu"
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({"identity": {"latency_cpu": "Some Other CPU @ 1.0GHz"}}))
    argv = ["--budget-ms", "5", "--profile", "smoke", "--dataset", "digits", "--out-dir", str(out), "--space",
            str(LEAN), "--name", "other-cpu", "--resume"]
    err = refused(main, argv, capfd)
    assert len(err.strip().splitlines()) == 1, err[-2000:]
    assert "measured on 'Some Other CPU @ 1.0GHz'" in err and "--remeasure" in err
    assert sorted(p.name for p in out.rglob("*")) == ["other-cpu", "search", "search.json"]
    err = refused(main, [*argv, "--remeasure"], capfd)  # past the CPU check, to the next one
    assert "with different settings" in err and "latency_cpu" not in err, err


def test_a_name_whose_mlflow_experiment_was_deleted_refuses(tmp_path, capfd):
    """MLflow keeps a deleted experiment's name and refuses runs in it: a search of that name says how to
    restore or purge it, in one line, before Ray or the teacher start, and the store gains no run."""
    from mlflow.tracking import MlflowClient

    from search.frontier import main

    out = tmp_path / "out"
    out.mkdir()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    client.delete_experiment(client.create_experiment("gone"))
    capfd.readouterr()  # MLflow's own lines as it created the store
    err = refused(main, ["--budget-gmacs", str(BUDGET), "--profile", "smoke", "--dataset", "digits", "--out-dir",
                         str(out), "--space", str(LEAN), "--name", "gone"], capfd)
    assert len(err.strip().splitlines()) == 1 and "'gone'" in err and "was deleted" in err, err[-2000:]
    assert "mlflow gc --experiment-ids" in err and "--name" in err
    assert not (out / "search").exists() and not (out / "teachers").exists()
    assert client.search_runs([client.get_experiment_by_name("gone").experiment_id], run_view_type=3) == []


def test_latency_objective_front_and_hypervolume_over_three_objectives(out):
    """--budget-ms (latency becomes an objective): every trial records its latency predicted before
    training (within the budget) and measured after, at --latency-batch, with the backend; the parent
    run says which machine; review computes the front and the hypervolume over all three objectives
    (one plot per objective against accuracy). The budget is generous here: the projection itself is
    tested with injected timings (test_latency_budget.py) and timed in benchmarks/latency_budget.py."""
    from analysis import review
    from m2mdc.arch_latency import cpu_model

    frontier(out, "--name", "latency", "--space", str(LEAN), "--num-samples", "2", "--no-asha",
             "--budget-ms", "1000", "--latency-batch", "8")
    client, parents, children = mlflow_runs(out, "latency")
    assert parents[0].data.tags["objectives"] == "val_top1,gmacs,latency_ms"
    assert parents[0].data.metrics["teacher_latency_ms"] > 0
    assert cpu_model() in parents[0].data.tags["latency_machine"] and "batch 8" in parents[0].data.tags[
        "latency_machine"]
    done = [c for c in children if c.data.tags["status"] == "completed"]
    assert done and all(c.data.metrics["latency_ms"] > 0 and c.data.tags["latency_backend"] in
                        ("inductor", "eager-fallback") for c in done)
    for c in done:
        m = c.data.metrics
        assert m["latency_batch"] == 8 and 0 < m["predicted_latency_ms"] <= 1000 and m["latency_measurements"] >= 1
    assert list((out / "latency").rglob("*.json"))  # measurements cached for the next search on this machine
    search = review.load_search(client, "latency")
    assert search.objectives == ("val_top1", "gmacs", "latency_ms")
    _, front = review.pareto_table(search)
    rows = [{"id": c.data.tags["trial_id"], **c.data.metrics} for c in done]
    assert {t["trial_id"] for t in front} == {r["id"] for r in non_dominated(rows, ("val_top1", "gmacs", "latency_ms"))}
    refs = search.references
    assert refs == {"val_top1": 0.0, "gmacs": BUDGET, "latency_ms": parents[0].data.metrics["teacher_latency_ms"]}
    import numpy as np
    pts = [[-t["val_top1"], t["gmacs"] / refs["gmacs"], t["latency_ms"] / refs["latency_ms"]] for t in front
           if t["latency_ms"] < refs["latency_ms"]]
    import moocore
    want = float(moocore.hypervolume(np.array(pts), ref=np.array([0.0, 1.0, 1.0]))) if pts else 0.0
    assert review.hypervolume_curve(search)[-1] == pytest.approx(want)
    r = subprocess.run([sys.executable, "analysis/review.py", "--experiment", "latency", "--out-dir", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "objectives val_top1, gmacs, latency_ms" in r.stdout
    assert (out / "review" / "latency" / "frontier-latency_ms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the README's latency check of such a search (its --budget-ms search and this check are only parsed
    # there, tests/readme.py): every finished trial re-timed in a fresh process, a report written
    r = subprocess.run([sys.executable, "benchmarks/latency_budget.py", "--search", "latency", "--out-dir", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"{len(done)} finished trials re-timed in a fresh process" in r.stdout
    assert (out / "benchmarks" / "latency_budget" / "recheck-latency" / "latency_budget.json").exists()


def test_latency_budget_search_is_not_retrained_as_a_gmacs_one(out, capfd):
    """Members of a --budget-ms search were width-fitted to latencies measured during the search; the
    tools that re-train members from their configurations refuse rather than train other widths."""
    from analysis.finalize import main

    err = refused(main, ["--experiment", "latency", "--dataset", "digits", "--epochs", "5", "--out-dir", str(out)],
                  capfd)
    assert len(err.strip().splitlines()) == 1, err[-2000:]
    assert "ran under a latency budget (--budget-ms 1000.0)" in err


def test_seeded_baselines_are_the_baselines_or_skipped_with_the_reason():
    """A seeded baseline is trained as itself or not at all: a space that cannot express it (a knob
    outside its choices, a fixed schedule) skips it with a line naming the value."""
    from m2mdc.compiler import BASELINES, SHALLOWEST
    from search.frontier import seeded_points
    from spaces import load_space

    full, skipped = seeded_points(load_space("resnet18", arch="resnet18"))
    assert list(full) == [*BASELINES, SHALLOWEST] and skipped == []
    assert full["Torch-Pruning-like global"]["ranking"] == "global"
    assert full["Torch-Pruning-like global"]["signal"] == "group_l1"
    # the space's deepest block cut at full width: its largest prune ratio, ResNet-18's one block per stage
    shallow = full[SHALLOWEST]
    assert shallow["prune_ratio"] == 0.95 and shallow["mid_keep"] == 1.0
    assert all(shallow[f"planes_keep/{s}"] == 1.0 for s in ("layer1", "layer2", "layer3", "layer4"))
    assert {k: v for k, v in shallow.items() if k != "prune_ratio"} == \
        {k: v for k, v in full["Torch-Pruning-like local"].items() if k != "prune_ratio"}
    lean, skipped = seeded_points(load_space(str(LEAN), arch="resnet18"))
    assert list(lean) == ["M2M-DC at the budget"] and len(skipped) == 4
    assert any("signal='group_l1'" in s and "Torch-Pruning-like local" in s for s in skipped)
    assert any("signal='group_l1'" in s and SHALLOWEST in s for s in skipped)
    # under a latency budget the same pruning shipped as INT8 is a baseline too, where the space has QAT
    timed, _ = seeded_points(load_space("resnet18", arch="resnet18"), latency=True)
    assert list(timed) == [*BASELINES, "Torch-Pruning-like local + INT8 QAT", SHALLOWEST]
    assert timed["Torch-Pruning-like local + INT8 QAT"]["qat"] is True
    lean, skipped = seeded_points(load_space(str(LEAN), arch="resnet18"), latency=True)
    assert any("INT8 QAT" in s and "qat=True" in s for s in skipped)
