"""Search members as MLflow models against a real ``mlflow server`` on 127.0.0.1: an FP32 and an INT8 (QAT)
result logged as a search's finish logs its Pareto members (search/mlflow_models.py), registered by
``analysis/export.py --register NAME --alias ALIAS``, then loaded as ``models:/NAME@ALIAS`` in a new
process, whose val top-1 through the user's own loader equals the recorded one."""
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from torchvision.models import resnet18

import m2mdc
from search.mlflow_models import MODEL_ID_TAG, log_member

from .crash import MlflowServer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from compress_own_model import Digits, train_plainly  # noqa: E402

LOAD = """
import json, sys
import mlflow, torch
from torch.utils.data import DataLoader
sys.path.insert(0, {examples!r})
from compress_own_model import Digits
import m2mdc.quant  # an INT8 program's quantized ops, registered before it loads
mlflow.set_tracking_uri({uri!r})
model = mlflow.pytorch.load_model({model_uri!r})
correct = total = 0
with torch.no_grad():
    for x, y in DataLoader(Digits("val"), batch_size=64):
        correct += int((model(x).argmax(1) == y).sum()); total += len(y)
print(json.dumps({{"val_top1": 100.0 * correct / total, "type": type(model).__name__}}))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """An FP32 and an INT8 result of one digits model, compressed through the API (~1 min)."""
    torch.manual_seed(0)
    model = train_plainly(resnet18(num_classes=10), Digits("train"), epochs=1)
    root = tmp_path_factory.mktemp("members")
    for qat in (False, True):
        m2mdc.compress(model, Digits("train"), Digits("val"), budget_gmacs=0.02, knobs={"qat": qat}, kd_epochs=1,
                       steps_per_epoch=4, out_dir=root / ("int8" if qat else "fp32"))
    return root


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_member_round_trips_through_the_registry_of_a_real_server(server, results, kind):
    client = mlflow.MlflowClient(server.uri)
    exp = client.get_experiment_by_name("members") or client.get_experiment(client.create_experiment("members"))
    run = client.create_run(exp.experiment_id, tags={"role": "trial"})
    client.set_terminated(run.info.run_id)
    model_id = log_member(server.uri, run.info.run_id, results / kind)
    assert log_member(server.uri, run.info.run_id, results / kind) == model_id  # a resume logs it once
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == run.info.run_id and logged.model_type == kind
    assert client.get_run(run.info.run_id).data.tags[MODEL_ID_TAG] == model_id

    name = f"digits-{kind}"
    r = subprocess.run([sys.executable, "analysis/export.py", "--run-id", run.info.run_id, "--register", name,
                        "--alias", "champion", "--mlflow-uri", server.uri], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"models:/{name}@champion" in r.stdout
    code = LOAD.format(examples=str(REPO / "examples"), uri=server.uri, model_uri=f"models:/{name}@champion")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    recorded = json.loads((results / kind / "record.json").read_text())
    assert recorded["int8"] == (kind == "int8")
    assert got["val_top1"] == pytest.approx(recorded["val_top1"], abs=1e-9)


def test_registering_a_run_without_a_model_is_one_line_exit_2(server):
    client = mlflow.MlflowClient(server.uri)
    exp = client.get_experiment_by_name("members") or client.get_experiment(client.create_experiment("members"))
    run = client.create_run(exp.experiment_id)
    r = subprocess.run([sys.executable, "analysis/export.py", "--run-id", run.info.run_id, "--register", "x",
                        "--mlflow-uri", server.uri], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "has no logged MLflow model" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
