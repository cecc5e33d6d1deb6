"""Search members as MLflow models: listed in MLflow's UI, registrable, loadable as ``models:/NAME@ALIAS``.

A Pareto member's saved result (m2mdc.results: keep_cfg.json + weights) is logged with
``mlflow.pytorch.log_model(name=...)`` in MLflow 3's ``pt2`` serialization: the module goes through
``torch.export`` and loads back with ``mlflow.pytorch.load_model`` as the exported program's module,
with no pickled code. FP32 and INT8 members take the same form: an INT8 member *is* the converted
torch.export program that ships (m2mdc.quant), so MLflow stores what the search measured. Loading an
INT8 member needs its quantized ops registered first (``import m2mdc.quant``), as any PT2E program does.
The signature is a float32 image batch [-1, 3, R, R] -> logits [-1, classes], the input example two zero
images (a batch of one would fix the exported batch size to 1).

The logged model's id is tagged on the trial run (``mlflow_model_id``), so a resumed search that logs
its members again skips those already logged.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature

from m2mdc.errors import UserError
from m2mdc.results import load_result

MODEL_NAME = "member"  # the logged model's name within its run
MODEL_ID_TAG = "mlflow_model_id"


def log_member(uri: str, run_id: str, model_dir: Path) -> str:
    """Log the saved result in ``model_dir`` as an MLflow model of run ``run_id``; its model id (reused
    when the run has one already)."""
    client = mlflow.MlflowClient(uri)
    known = client.get_run(run_id).data.tags.get(MODEL_ID_TAG)
    if known:
        return known
    model, meta = load_result(Path(model_dir))
    res = int(meta.get("resolution", 32))
    example = np.zeros((2, 3, res, res), dtype=np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    kind = "int8" if meta.get("int8") else "fp32"
    with tracking_at(uri):
        run = client.get_run(run_id)
        logged = mlflow.initialize_logged_model(name=MODEL_NAME, source_run_id=run_id, model_type=kind,
                                                experiment_id=run.info.experiment_id,
                                                params={"arch": meta["arch"], "int8": str(bool(meta.get("int8")))})
        info = mlflow.pytorch.log_model(model, name=MODEL_NAME, signature=infer_signature(example, logits),
                                        input_example=example, serialization_format="pt2", model_id=logged.model_id,
                                        pip_requirements=requirements(bool(meta.get("int8"))))
    client.set_tag(run_id, MODEL_ID_TAG, info.model_id)
    return info.model_id


def requirements(int8: bool) -> list[str]:
    """What loading the model needs, stated rather than inferred (MLflow's inference loads the model in a
    subprocess, which cannot run an INT8 program before its quantized ops are registered)."""
    from importlib.metadata import version

    return [f"torch=={version('torch')}"] + ([f"torchao=={version('torchao')}"] if int8 else [])


def register_member(uri: str, run_id: str, name: str, alias: str | None = None) -> int:
    """Register run ``run_id``'s logged model as a version of ``name`` (and point ``alias`` at it)."""
    client = mlflow.MlflowClient(uri)
    model_id = client.get_run(run_id).data.tags.get(MODEL_ID_TAG)
    if not model_id:
        raise UserError(f"run {run_id} has no logged MLflow model (only a search's Pareto members get one); "
                        f"take a run id marked pareto in analysis/review.py's table")
    with tracking_at(uri):
        version = mlflow.register_model(f"models:/{model_id}", name, tags={"source_run": run_id})
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return int(version.version)


@contextmanager
def tracking_at(uri: str):
    """MLflow's fluent API pointed at ``uri`` for a block (the model APIs have no client form)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
