"""What is done with a finished search's members, on a search with a failing trial (recorded, and the
search goes on): ONNX export, finalize (re-training from the teacher, logged under the search's parent
run) and the baselines table's search row. Helpers: tests/searches.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.searches import BUDGET, LEAN, REPO, check_search, frontier, mlflow_runs
from tests.shrunk import PREFIX as SHRUNK
from tests.shrunk import SHORT_STEPS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(search_out):
    return search_out()


def test_failing_trial_is_recorded_and_the_search_goes_on(out, tmp_path):
    space = yaml.safe_load(LEAN.read_text())
    space["params"]["kd_lr"] = {"choices": [1.0e-4, 1.0e30]}  # 1e30: Adam's first step blows the weights up
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    base = {"prune_ratio": 0.3, "planes_keep": {s: 0.8 for s in ("layer1", "layer2", "layer3", "layer4")},
            "mid_keep": 0.6, "order": "bpm", "signal": "bn", "alpha": 0.1, "beta": 0.1, "sparsity": 0.0}
    points = [{**base, "kd_lr": 1.0e30}, {**base, "kd_lr": 1.0e-4}, {**base, "kd_lr": 1.0e-4, "mid_keep": 0.3}]
    points_file = tmp_path / "points.json"
    points_file.write_text(json.dumps(points))
    frontier(out, "--name", "failing", "--no-seed-baselines", "--space", str(space_file), "--points", str(points_file),
             "--num-samples", "3", "--no-asha")
    children, by_status = check_search(out, "failing", 3)
    assert sorted(by_status.values()) == ["completed", "completed", "failed"]
    failed = next(c for c in children if c.data.tags["status"] == "failed")
    assert failed.info.status == "FAILED" and "non-finite" in failed.data.tags["error"]
    assert failed.data.params["kd_lr"] == "1e+30"


def test_export_a_pareto_member_to_onnx(out):
    """analysis/export.py: an FP32 Pareto member's ONNX file agrees with PyTorch in onnxruntime to 1e-4."""
    import numpy as np
    import onnxruntime as ort

    from m2mdc.results import load_result

    client, _, children = mlflow_runs(out, "failing")  # the lean space: FP32 models
    member = next(c for c in children if c.data.tags.get("pareto") == "true")
    dest = out / "exported"
    r = subprocess.run([sys.executable, "analysis/export.py", "--run-id", member.info.run_id, "--format", "onnx",
                        "--out-dir", str(out), "--dest", str(dest)], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    model, _ = load_result(Path(client.download_artifacts(member.info.run_id, "model", str(out / "dl"))))
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(dest / "model.onnx"), providers=["CPUExecutionProvider"])
    import torch

    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x})[0] - ref).max() <= 1e-4


def test_finalize_refuses_another_teacher_than_the_searchs(out, tmp_path):
    """Re-training a search's members from another teacher (or on other data) is refused before anything
    is trained: one line naming the search's own flags, exit 2, nothing written."""
    r = subprocess.run([sys.executable, "analysis/finalize.py", "--experiment", "failing", "--k", "1", "--seeds", "0",
                        "--dataset", "digits", "--epochs", "3", "--out-dir", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "M2MDC_RESULTS_DIR": str(tmp_path / "results")})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--epochs 5" in lines[0], r.stderr
    assert not (tmp_path / "results").exists() and not (out / "finalize" / "failing").exists()


def test_finalize_logs_finalized_children_under_the_parent(out, tmp_path):
    results = tmp_path / "results"
    r = subprocess.run([*SHRUNK, "analysis/finalize.py", "--experiment", "failing", "--k", "1", "--seeds", "0",
                        "--budgets", "short", "--dataset", "digits", "--epochs", "5", "--out-dir", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900, env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    assert r.returncode == 0, r.stderr[-3000:]
    client, parents, children = mlflow_runs(out, "failing")
    exp = client.get_experiment_by_name("failing")
    finalized = [x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("role") == "finalized"]
    assert len(finalized) == 1 and finalized[0].data.tags["finalized"] == "true"
    assert finalized[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    member = next(c for c in children if c.data.tags["trial_id"] == finalized[0].data.tags["trial_id"])
    assert member.data.tags["pareto"] == "true"
    # A fresh clone has results/ but not the MLflow store the search ran in: the saved record stands in
    saved = json.loads((results / "finalize" / "failing" / "search.json").read_text())
    assert member.info.run_id in {m["run_id"] for m in saved["front"]} and saved["params"]["dataset"] == "digits"
    empty = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    again = subprocess.run([*SHRUNK, "analysis/finalize.py", "--experiment", "failing", "--k", "1", "--seeds",
                            "0", "--budgets", "short", "--dataset", "digits", "--epochs", "5", "--out-dir", str(out),
                            "--mlflow-uri", empty], cwd=REPO, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "search.json (no MLflow store here; finalized runs are saved under results/" in again.stdout
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert table and table == [line for line in again.stdout.splitlines() if line.startswith("| ")]
    assert len([x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("role") == "finalized"]) == 1
    # ... and a wrong teacher is still refused from the record, as from MLflow
    wrong = subprocess.run([sys.executable, "analysis/finalize.py", "--experiment", "failing", "--k", "1", "--seeds",
                            "0", "--dataset", "digits", "--epochs", "3", "--out-dir", str(out), "--mlflow-uri", empty],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    lines = wrong.stderr.strip().splitlines()
    assert wrong.returncode == 2 and len(lines) == 1 and "--epochs 5" in lines[0], wrong.stderr
    saved = json.loads(next((results / "finalize" / "failing").glob("short-seed0-*.json")).read_text())
    assert finalized[0].data.metrics["test_top1"] == pytest.approx(saved["test_top1"])
    assert saved["kd_epochs_trained"] == 8  # the short budget's total, spread over the member's repairs
    assert saved["kd_settings"]["steps_per_epoch"] == SHORT_STEPS  # of batches cut by tests/shrunk.py
    from analysis import review  # finalized children do not count as trials of the search

    assert len(review.load_search(client, "failing").trials) == 3


def test_baselines_train_every_row_with_the_same_settings(out, tmp_path):
    """analysis/baselines.py: equal KD settings and epochs are asserted on what each row's training was
    handed (the plans it ran), not on a label; the tuned row keeps the search's own KD knobs. Latency is
    timed in the second call only (one row and the teacher: the same code for every row, and ~14 inductor
    compiles less in CI). A --config row is a user's configuration, trained like the others. The M2M-DC row
    is left out: a compiled config like the uniform row, trained by the same code (and every smoke search on
    the lean space trains it: its one seeded baseline)."""
    pytest.importorskip("torch_pruning")
    results = tmp_path / "results"
    r = subprocess.run([*SHRUNK, "analysis/baselines.py", "--budget-gmacs", str(BUDGET), "--dataset", "digits",
                        "--epochs", "5", "--experiment", "failing", "--k", "1", "--seeds", "0", "--budgets", "short",
                        "--only", "uniform,global,Taylor,search,shallow", "--no-latency", "--name", "digits-table",
                        "--config", 'shallow={"prune_ratio": 0.8, "planes_keep": 1.0, "mid_keep": 1.0}',
                        "--out-dir", str(out)],
                       cwd=REPO, capture_output=True,
                       text=True, timeout=1500, env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    assert r.returncode == 0, r.stderr[-3000:]
    folder = out / "baselines" / "digits-table"  # --name: another teacher's table beside the default one
    data = json.loads((folder / "baselines.json").read_text())
    rows = data["rows"]
    assert any(k.startswith("Torch-Pruning global") for k in rows) and any(k.startswith("uniform") for k in rows)
    taylor = next(rs for k, rs in rows.items() if "Taylor" in k)
    assert taylor[0]["run"]["tp_importance"] == "group_taylor" and taylor[0]["gmacs"] <= BUDGET
    shallow = rows["shallow (--config)"][0]  # a user's configuration: the given knobs, the common settings
    assert shallow["run"]["config"] == {"prune_ratio": 0.8, "planes_keep": 1.0, "mid_keep": 1.0}
    assert [len(v) for v in shallow["keep_cfg"]["blocks"].values()] == [1, 1, 1, 1]  # 4 of 5 free blocks gone
    fixed = [res for label, rs in rows.items() if "own sampled KD" not in label for res in rs]
    tuned = [res for label, rs in rows.items() if "own sampled KD" in label for res in rs]
    assert len(fixed) >= 5 and tuned
    assert all(res["kd_settings"] == fixed[0]["kd_settings"] for res in fixed)  # what training was handed
    assert fixed[0]["kd_settings"]["kl_weight"] == 1.0 and fixed[0]["kd_settings"]["steps_per_epoch"] == SHORT_STEPS
    assert {res["epochs_trained"] for res in fixed + tuned} == {8}
    assert all(res["gmacs"] <= BUDGET for res in fixed + tuned)
    client, _, children = mlflow_runs(out, "failing")
    tid = next(res["row"].split()[-1] for res in fixed if res["row"].startswith("search "))  # the finalized member
    trial = next(c for c in children if c.data.tags["trial_id"] == tid)
    assert tuned[0]["kd_settings"]["lr"] == pytest.approx(float(trial.data.params["kd_lr"]))  # its own sampled lr
    assert data["latency"] == {} and (folder / "baselines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (folder / "baselines-latency.png").exists()  # --no-latency draws no empty latency plot
    assert sorted(p.name for p in results.glob("baselines/*")) == ["digits-table"]
    # A fresh machine has the committed results but not the models under outputs/: a row is reused as
    # saved, and its model is trained again only to be timed, which the table says
    import shutil

    uniform = rows[next(k for k in rows if k.startswith("uniform"))][0]
    saved = results / "baselines" / "digits-table" / f"short-seed0-{uniform['key']}.json"
    before = saved.read_bytes()
    shutil.rmtree(folder / "models" / saved.stem)
    again = subprocess.run([*SHRUNK, "analysis/baselines.py", "--budget-gmacs", str(BUDGET), "--dataset",
                            "digits", "--epochs", "5", "--seeds", "0", "--budgets", "short", "--only", "uniform",
                            "--name", "digits-table", "--out-dir", str(out)], cwd=REPO, capture_output=True, text=True,
                           timeout=900,
                           env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    assert again.returncode == 0, again.stderr[-3000:]
    redo = json.loads((folder / "baselines.json").read_text())
    label = next(k for k in redo["rows"] if k.startswith("uniform"))
    assert redo["rows"][label][0]["test_top1"] == uniform["test_top1"] and saved.read_bytes() == before
    assert redo["latency"][label]["model_retrained"] and (folder / "models" / saved.stem).exists()
    assert set(redo["latency"]) == {"teacher", label}
    assert all(lat["backend"] in ("inductor", "eager-fallback") and lat["bs1_ms"] > 0 and lat["bs64_images_per_s"] > 0
               for lat in redo["latency"].values())
    for png in ("baselines.png", "baselines-latency.png", "baselines-throughput.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"trained again on this machine to be timed (saved results stay the reported ones): {label}" in again.stdout
