"""Export a chosen point of a search (an MLflow trial run) as a deployable model.

    python analysis/export.py --run-id RUN_ID --format onnx          # FP32 ONNX, checked in onnxruntime
    python analysis/export.py --run-id RUN_ID --format torchscript
    python analysis/export.py --run-id RUN_ID --format state_dict    # model.pt + keep_cfg.json
    python analysis/export.py --run-id RUN_ID --register NAME --alias champion   # MLflow Model Registry

``--register`` makes the run's logged MLflow model (every Pareto member has one: search/mlflow_models.py)
a version of registered model NAME, optionally under ALIAS; ``mlflow.pytorch.load_model("models:/NAME@ALIAS")``
then loads it anywhere that tracking server is reachable (an INT8 member after ``import m2mdc.quant``).

The run's ``model`` artefact (logged for Pareto members, or pass --model-dir for any trial folder)
is reloaded with m2mdc.results.load_result. The ONNX file is run in onnxruntime on a batch of
test-sized inputs and compared with PyTorch (max |diff| must be <= --atol, default 1e-4); a
mismatch deletes the file and exits 2. INT8 results ship as their torch.export program
(``model.pt2``); ONNX / TorchScript export of PT2E INT8 graphs is not supported here.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from m2mdc.errors import Parser, UserError, cli
from m2mdc.io import atomic_dir, ensure_writable, out_root, write_json
from search.mlflow_store import open_client

FORMATS = ("onnx", "torchscript", "state_dict")


def fetch_model_dir(run_id: str, uri: str, dest: Path) -> Path:
    from mlflow.exceptions import MlflowException  # mlflow costs ~1.2 s to import; only --run-id needs it

    client = open_client(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no MLflow run {run_id} in {uri}; take a run id from analysis/review.py's table") from None
    if "model" not in {a.path for a in client.list_artifacts(run_id)}:
        raise UserError(f"run {run_id} has no 'model' artefact (only Pareto members get one); pass --model-dir "
                        f"OUT/search/NAME/trial_ID/model for another trial")
    return Path(client.download_artifacts(run_id, "model", str(dest)))


def export_onnx(model: torch.nn.Module, path: Path, resolution: int, atol: float) -> float:
    """Write ONNX (dynamic batch) and return max |onnxruntime - PyTorch| on a random batch."""
    x = torch.randn(2, 3, resolution, resolution)
    torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = torch.randn(8, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(probe).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: probe.numpy()})[0]
    return float(np.abs(got - ref).max())


def register(a) -> int:
    # search.mlflow_models imports mlflow (~1.2 s) and m2mdc.results; only --register needs them
    from mlflow.exceptions import MlflowException

    from search.mlflow_models import register_member
    from search.tracking import default_uri

    uri = a.mlflow_uri or default_uri(out_root(a.out_dir))
    try:
        open_client(uri).get_run(a.run_id)
    except MlflowException:
        raise UserError(f"no MLflow run {a.run_id} in {uri}; take a run id from analysis/review.py's table") from None
    version = register_member(uri, a.run_id, a.register, a.alias)
    where = f"models:/{a.register}@{a.alias}" if a.alias else f"models:/{a.register}/{version}"
    print(f"registered run {a.run_id} as {a.register} version {version}; load it with "
          f"mlflow.pytorch.load_model({where!r})")
    return 0


@cli
def main(argv=None):
    p = Parser(prog="python analysis/export.py", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-id", help="MLflow trial run holding a 'model' artefact")
    src.add_argument("--model-dir", help="a model folder (search trial_*/model or m2mdc.compress output)")
    p.add_argument("--format", choices=FORMATS, help="write the model in this format (or --register)")
    p.add_argument("--register", metavar="NAME", help="register the run's MLflow model as a version of NAME in "
                   "the Model Registry (needs --run-id)")
    p.add_argument("--alias", help="with --register: point this alias (e.g. champion) at the new version")
    p.add_argument("--mlflow-uri", default=None, help="default sqlite:///OUT/mlflow.db")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--dest", default=None, help="output folder (default OUT/export/RUN_OR_DIR-FORMAT)")
    p.add_argument("--atol", type=float, default=1e-4, help="max |onnxruntime - PyTorch| accepted (default 1e-4)")
    a = p.parse_args(argv)
    if (a.format is None) == (a.register is None):
        raise UserError("pass --format FORMAT to write a file, or --register NAME to register the run's model")
    if a.register and not a.run_id:
        raise UserError("--register needs --run-id RUN_ID (a Pareto member's run: analysis/review.py lists them)")
    if a.alias and not a.register:
        raise UserError("--alias applies to --register NAME")
    if a.register:
        return register(a)
    # m2mdc.results (m2mdc.models, torchvision) adds ~1.3 s and search.tracking (ray.tune) ~2.6 s to the import
    # (python -X importtime); --help and the argument errors do not pay them
    from m2mdc.results import load_result
    from search.tracking import default_uri

    root = out_root(a.out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if a.run_id:
            model_dir = fetch_model_dir(a.run_id, a.mlflow_uri or default_uri(root), Path(tmp))
        else:
            model_dir = Path(a.model_dir)
        model, meta = load_result(model_dir)
        res = int(meta.get("resolution", 32))
        if meta.get("int8") and a.format != "state_dict":
            raise UserError(f"{a.format} export of an INT8 (PT2E) model is not supported; use --format state_dict, "
                            f"which ships its torch.export program model.pt2")
        label = a.run_id or model_dir.parent.name
        dest = Path(a.dest) if a.dest else ensure_writable(root / "export") / f"{label}-{a.format}"
        with atomic_dir(dest) as out:
            write_json(out / "keep_cfg.json", {k: meta[k] for k in ("arch", "num_classes", "keep_cfg", "int8",
                                                                     "resolution") if k in meta})
            if a.format == "state_dict":
                for f in ("model.pt", "model.pt2"):
                    if (model_dir / f).exists():
                        shutil.copy2(model_dir / f, out / f)
                note = "state_dict + keep_cfg.json (+ model.pt2)"
            elif a.format == "torchscript":
                x = torch.zeros(1, 3, res, res)
                with torch.no_grad():
                    traced = torch.jit.trace(model.eval(), x)
                    traced.save(str(out / "model.torchscript.pt"))
                    diff = float((traced(x) - model(x)).abs().max())
                note = f"TorchScript, max |diff| vs eager {diff:.2e}"
            else:
                diff = export_onnx(model.eval(), out / "model.onnx", res, a.atol)
                if diff > a.atol:
                    raise UserError(f"ONNX outputs differ from PyTorch by {diff:.2e} > --atol {a.atol:g}; "
                                    f"nothing written")
                note = f"ONNX, onnxruntime vs PyTorch max |diff| {diff:.2e} (<= {a.atol:g})"
    print(f"{note} -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
